"""Network listeners: thin asyncio / grpc.aio shells that turn what senders send into Batches."""
