# syntax=docker/dockerfile:1
# A model bundle as an image, for the init container of
# k8s/overlays/model-from-image: the bundle's files in /bundle, and a shell
# (busybox) for the copy. Build from the repository root:
#   docker build -f k8s/image/model-bundle.Dockerfile --build-arg BUNDLE=models/hdfs \
#     -t registry.example.internal/logminer/model:hdfs-1 .
# Tag <name>-<card version>, as the overlay expects.
ARG BASE_IMAGE=busybox:1.37
FROM ${BASE_IMAGE}
ARG BUNDLE=models/hdfs
COPY ${BUNDLE}/card.json ${BUNDLE}/model.tflite ${BUNDLE}/window.tflite ${BUNDLE}/vocab.json /bundle/
USER 10001:10001
