from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Breakdown(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREAKDOWN_UNSPECIFIED: _ClassVar[Breakdown]
    BREAKDOWN_HOUR: _ClassVar[Breakdown]
    BREAKDOWN_TEMPLATE: _ClassVar[Breakdown]
    BREAKDOWN_DETECTOR: _ClassVar[Breakdown]

class Measure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEASURE_UNSPECIFIED: _ClassVar[Measure]
    MEASURE_RECORDS: _ClassVar[Measure]
    MEASURE_ANOMALIES: _ClassVar[Measure]
    MEASURE_REDACTIONS: _ClassVar[Measure]
    MEASURE_TEMPLATE_RECORDS: _ClassVar[Measure]

class Mechanism(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MECHANISM_UNSPECIFIED: _ClassVar[Mechanism]
    MECHANISM_DISCRETE_LAPLACE: _ClassVar[Mechanism]
    MECHANISM_DISCRETE_GAUSSIAN: _ClassVar[Mechanism]
    MECHANISM_EXACT: _ClassVar[Mechanism]
BREAKDOWN_UNSPECIFIED: Breakdown
BREAKDOWN_HOUR: Breakdown
BREAKDOWN_TEMPLATE: Breakdown
BREAKDOWN_DETECTOR: Breakdown
MEASURE_UNSPECIFIED: Measure
MEASURE_RECORDS: Measure
MEASURE_ANOMALIES: Measure
MEASURE_REDACTIONS: Measure
MEASURE_TEMPLATE_RECORDS: Measure
MECHANISM_UNSPECIFIED: Mechanism
MECHANISM_DISCRETE_LAPLACE: Mechanism
MECHANISM_DISCRETE_GAUSSIAN: Mechanism
MECHANISM_EXACT: Mechanism

class Batch(_message.Message):
    __slots__ = ("records", "sequence")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    sequence: int
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., sequence: _Optional[int] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("time_unix_nano", "tag", "body", "attributes", "resource", "severity")
    TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    time_unix_nano: int
    tag: str
    body: bytes
    attributes: _containers.RepeatedCompositeFieldContainer[KeyValue]
    resource: _containers.RepeatedCompositeFieldContainer[KeyValue]
    severity: str
    def __init__(self, time_unix_nano: _Optional[int] = ..., tag: _Optional[str] = ..., body: _Optional[bytes] = ..., attributes: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., resource: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., severity: _Optional[str] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("string_value", "bool_value", "int_value", "double_value", "array_value", "kvlist_value", "bytes_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    ARRAY_VALUE_FIELD_NUMBER: _ClassVar[int]
    KVLIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    BYTES_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    bool_value: bool
    int_value: int
    double_value: float
    array_value: ArrayValue
    kvlist_value: KeyValueList
    bytes_value: bytes
    def __init__(self, string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., array_value: _Optional[_Union[ArrayValue, _Mapping]] = ..., kvlist_value: _Optional[_Union[KeyValueList, _Mapping]] = ..., bytes_value: _Optional[bytes] = ...) -> None: ...

class ArrayValue(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class KeyValueList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[KeyValue]
    def __init__(self, values: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: Value
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("sequence", "accepted", "rejected", "error")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    accepted: int
    rejected: int
    error: str
    def __init__(self, sequence: _Optional[int] = ..., accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class AggregatesRequest(_message.Message):
    __slots__ = ("consumer", "since_unix_seconds", "until_unix_seconds", "group_by", "exact")
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    consumer: str
    since_unix_seconds: int
    until_unix_seconds: int
    group_by: _containers.RepeatedScalarFieldContainer[Breakdown]
    exact: bool
    def __init__(self, consumer: _Optional[str] = ..., since_unix_seconds: _Optional[int] = ..., until_unix_seconds: _Optional[int] = ..., group_by: _Optional[_Iterable[_Union[Breakdown, str]]] = ..., exact: _Optional[bool] = ...) -> None: ...

class AggregateCount(_message.Message):
    __slots__ = ("measure", "hour_unix_seconds", "key", "template", "value")
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    HOUR_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    measure: Measure
    hour_unix_seconds: int
    key: str
    template: str
    value: int
    def __init__(self, measure: _Optional[_Union[Measure, str]] = ..., hour_unix_seconds: _Optional[int] = ..., key: _Optional[str] = ..., template: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...

class MeasureNoise(_message.Message):
    __slots__ = ("measure", "sensitivity", "scale", "threshold")
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    measure: Measure
    sensitivity: int
    scale: float
    threshold: int
    def __init__(self, measure: _Optional[_Union[Measure, str]] = ..., sensitivity: _Optional[int] = ..., scale: _Optional[float] = ..., threshold: _Optional[int] = ...) -> None: ...

class AggregatesReport(_message.Message):
    __slots__ = ("consumer", "mechanism", "since_unix_seconds", "until_unix_seconds", "counts", "noise", "epsilon_spent", "delta_spent", "epsilon_remaining", "delta_remaining")
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    DELTA_SPENT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REMAINING_FIELD_NUMBER: _ClassVar[int]
    DELTA_REMAINING_FIELD_NUMBER: _ClassVar[int]
    consumer: str
    mechanism: Mechanism
    since_unix_seconds: int
    until_unix_seconds: int
    counts: _containers.RepeatedCompositeFieldContainer[AggregateCount]
    noise: _containers.RepeatedCompositeFieldContainer[MeasureNoise]
    epsilon_spent: float
    delta_spent: float
    epsilon_remaining: float
    delta_remaining: float
    def __init__(self, consumer: _Optional[str] = ..., mechanism: _Optional[_Union[Mechanism, str]] = ..., since_unix_seconds: _Optional[int] = ..., until_unix_seconds: _Optional[int] = ..., counts: _Optional[_Iterable[_Union[AggregateCount, _Mapping]]] = ..., noise: _Optional[_Iterable[_Union[MeasureNoise, _Mapping]]] = ..., epsilon_spent: _Optional[float] = ..., delta_spent: _Optional[float] = ..., epsilon_remaining: _Optional[float] = ..., delta_remaining: _Optional[float] = ...) -> None: ...
