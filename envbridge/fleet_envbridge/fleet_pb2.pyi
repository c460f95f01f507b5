from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[Dtype]
    DTYPE_F32: _ClassVar[Dtype]
    DTYPE_U8: _ClassVar[Dtype]
    DTYPE_I64: _ClassVar[Dtype]
DTYPE_UNSPECIFIED: Dtype
DTYPE_F32: Dtype
DTYPE_U8: Dtype
DTYPE_I64: Dtype

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: Dtype
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[Dtype, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Sequence(_message.Message):
    __slots__ = ("observations", "actions", "rewards", "is_first", "terminated", "truncated", "behaviour_logits", "behaviour_versions", "initial_state", "actor_id", "priority")
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    IS_FIRST_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_LOGITS_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    observations: Tensor
    actions: Tensor
    rewards: _containers.RepeatedScalarFieldContainer[float]
    is_first: _containers.RepeatedScalarFieldContainer[bool]
    terminated: _containers.RepeatedScalarFieldContainer[bool]
    truncated: _containers.RepeatedScalarFieldContainer[bool]
    behaviour_logits: Tensor
    behaviour_versions: _containers.RepeatedScalarFieldContainer[int]
    initial_state: Tensor
    actor_id: int
    priority: float
    def __init__(self, observations: _Optional[_Union[Tensor, _Mapping]] = ..., actions: _Optional[_Union[Tensor, _Mapping]] = ..., rewards: _Optional[_Iterable[float]] = ..., is_first: _Optional[_Iterable[bool]] = ..., terminated: _Optional[_Iterable[bool]] = ..., truncated: _Optional[_Iterable[bool]] = ..., behaviour_logits: _Optional[_Union[Tensor, _Mapping]] = ..., behaviour_versions: _Optional[_Iterable[int]] = ..., initial_state: _Optional[_Union[Tensor, _Mapping]] = ..., actor_id: _Optional[int] = ..., priority: _Optional[float] = ...) -> None: ...

class InsertRequest(_message.Message):
    __slots__ = ("table", "sequence", "writer", "overlap", "also_tables")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    ALSO_TABLES_FIELD_NUMBER: _ClassVar[int]
    table: str
    sequence: Sequence
    writer: int
    overlap: int
    also_tables: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, table: _Optional[str] = ..., sequence: _Optional[_Union[Sequence, _Mapping]] = ..., writer: _Optional[int] = ..., overlap: _Optional[int] = ..., also_tables: _Optional[_Iterable[str]] = ...) -> None: ...

class InsertResponse(_message.Message):
    __slots__ = ("key", "also_keys")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ALSO_KEYS_FIELD_NUMBER: _ClassVar[int]
    key: int
    also_keys: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, key: _Optional[int] = ..., also_keys: _Optional[_Iterable[int]] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("table", "batch_size", "num_batches", "timeout_ms", "beta", "in_flight")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_BATCHES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    table: str
    batch_size: int
    num_batches: int
    timeout_ms: int
    beta: float
    in_flight: int
    def __init__(self, table: _Optional[str] = ..., batch_size: _Optional[int] = ..., num_batches: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., beta: _Optional[float] = ..., in_flight: _Optional[int] = ...) -> None: ...

class SampledItem(_message.Message):
    __slots__ = ("key", "priority", "probability", "times_sampled", "table_size", "weight", "sequence")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    TIMES_SAMPLED_FIELD_NUMBER: _ClassVar[int]
    TABLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    key: int
    priority: float
    probability: float
    times_sampled: int
    table_size: int
    weight: float
    sequence: Sequence
    def __init__(self, key: _Optional[int] = ..., priority: _Optional[float] = ..., probability: _Optional[float] = ..., times_sampled: _Optional[int] = ..., table_size: _Optional[int] = ..., weight: _Optional[float] = ..., sequence: _Optional[_Union[Sequence, _Mapping]] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SampledItem]
    def __init__(self, items: _Optional[_Iterable[_Union[SampledItem, _Mapping]]] = ...) -> None: ...

class PriorityUpdate(_message.Message):
    __slots__ = ("key", "priority")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    key: int
    priority: float
    def __init__(self, key: _Optional[int] = ..., priority: _Optional[float] = ...) -> None: ...

class UpdatePrioritiesRequest(_message.Message):
    __slots__ = ("table", "updates")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    table: str
    updates: _containers.RepeatedCompositeFieldContainer[PriorityUpdate]
    def __init__(self, table: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[PriorityUpdate, _Mapping]]] = ...) -> None: ...

class UpdatePrioritiesResponse(_message.Message):
    __slots__ = ("missing",)
    MISSING_FIELD_NUMBER: _ClassVar[int]
    missing: int
    def __init__(self, missing: _Optional[int] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class TableInfo(_message.Message):
    __slots__ = ("name", "sampler", "remover", "size", "max_size", "inserts", "samples", "max_times_sampled", "bytes", "max_bytes", "evictions", "min_size_to_sample", "samples_per_insert", "min_diff", "max_diff", "steps", "compression")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    REMOVER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    INSERTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_TIMES_SAMPLED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_TO_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_INSERT_FIELD_NUMBER: _ClassVar[int]
    MIN_DIFF_FIELD_NUMBER: _ClassVar[int]
    MAX_DIFF_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    sampler: str
    remover: str
    size: int
    max_size: int
    inserts: int
    samples: int
    max_times_sampled: int
    bytes: int
    max_bytes: int
    evictions: int
    min_size_to_sample: int
    samples_per_insert: float
    min_diff: float
    max_diff: float
    steps: int
    compression: str
    def __init__(self, name: _Optional[str] = ..., sampler: _Optional[str] = ..., remover: _Optional[str] = ..., size: _Optional[int] = ..., max_size: _Optional[int] = ..., inserts: _Optional[int] = ..., samples: _Optional[int] = ..., max_times_sampled: _Optional[int] = ..., bytes: _Optional[int] = ..., max_bytes: _Optional[int] = ..., evictions: _Optional[int] = ..., min_size_to_sample: _Optional[int] = ..., samples_per_insert: _Optional[float] = ..., min_diff: _Optional[float] = ..., max_diff: _Optional[float] = ..., steps: _Optional[int] = ..., compression: _Optional[str] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("tables", "chunks", "chunk_bytes")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableInfo]
    chunks: int
    chunk_bytes: int
    def __init__(self, tables: _Optional[_Iterable[_Union[TableInfo, _Mapping]]] = ..., chunks: _Optional[int] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class WeightsChunk(_message.Message):
    __slots__ = ("version", "total_bytes", "offset", "data", "last")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    version: int
    total_bytes: int
    offset: int
    data: bytes
    last: bool
    def __init__(self, version: _Optional[int] = ..., total_bytes: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class GetWeightsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchWeightsRequest(_message.Message):
    __slots__ = ("after_version",)
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    after_version: int
    def __init__(self, after_version: _Optional[int] = ...) -> None: ...

class EnvRequest(_message.Message):
    __slots__ = ("open", "reset", "step")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    open: EnvOpen
    reset: EnvReset
    step: EnvStep
    def __init__(self, open: _Optional[_Union[EnvOpen, _Mapping]] = ..., reset: _Optional[_Union[EnvReset, _Mapping]] = ..., step: _Optional[_Union[EnvStep, _Mapping]] = ...) -> None: ...

class EnvOpen(_message.Message):
    __slots__ = ("env_id", "num_envs", "seed", "options", "atari")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_ENVS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ATARI_FIELD_NUMBER: _ClassVar[int]
    env_id: str
    num_envs: int
    seed: int
    options: _containers.ScalarMap[str, str]
    atari: AtariPreprocessing
    def __init__(self, env_id: _Optional[str] = ..., num_envs: _Optional[int] = ..., seed: _Optional[int] = ..., options: _Optional[_Mapping[str, str]] = ..., atari: _Optional[_Union[AtariPreprocessing, _Mapping]] = ...) -> None: ...

class AtariPreprocessing(_message.Message):
    __slots__ = ("frame_skip", "screen_size", "grayscale", "frame_stack", "noop_max", "repeat_action_probability", "episodic_life", "max_episode_frames")
    FRAME_SKIP_FIELD_NUMBER: _ClassVar[int]
    SCREEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRAYSCALE_FIELD_NUMBER: _ClassVar[int]
    FRAME_STACK_FIELD_NUMBER: _ClassVar[int]
    NOOP_MAX_FIELD_NUMBER: _ClassVar[int]
    REPEAT_ACTION_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    EPISODIC_LIFE_FIELD_NUMBER: _ClassVar[int]
    MAX_EPISODE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    frame_skip: int
    screen_size: int
    grayscale: bool
    frame_stack: int
    noop_max: int
    repeat_action_probability: float
    episodic_life: bool
    max_episode_frames: int
    def __init__(self, frame_skip: _Optional[int] = ..., screen_size: _Optional[int] = ..., grayscale: _Optional[bool] = ..., frame_stack: _Optional[int] = ..., noop_max: _Optional[int] = ..., repeat_action_probability: _Optional[float] = ..., episodic_life: _Optional[bool] = ..., max_episode_frames: _Optional[int] = ...) -> None: ...

class EnvReset(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EnvStep(_message.Message):
    __slots__ = ("actions",)
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    actions: Tensor
    def __init__(self, actions: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EnvSpecMessage(_message.Message):
    __slots__ = ("observation_dtype", "observation_shape", "num_actions", "action_shape", "action_low", "action_high", "num_envs", "backend")
    OBSERVATION_DTYPE_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    ACTION_SHAPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_LOW_FIELD_NUMBER: _ClassVar[int]
    ACTION_HIGH_FIELD_NUMBER: _ClassVar[int]
    NUM_ENVS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    observation_dtype: Dtype
    observation_shape: _containers.RepeatedScalarFieldContainer[int]
    num_actions: int
    action_shape: _containers.RepeatedScalarFieldContainer[int]
    action_low: _containers.RepeatedScalarFieldContainer[float]
    action_high: _containers.RepeatedScalarFieldContainer[float]
    num_envs: int
    backend: str
    def __init__(self, observation_dtype: _Optional[_Union[Dtype, str]] = ..., observation_shape: _Optional[_Iterable[int]] = ..., num_actions: _Optional[int] = ..., action_shape: _Optional[_Iterable[int]] = ..., action_low: _Optional[_Iterable[float]] = ..., action_high: _Optional[_Iterable[float]] = ..., num_envs: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...

class EnvTimestep(_message.Message):
    __slots__ = ("observations", "rewards", "is_first", "terminated", "truncated")
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    IS_FIRST_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    observations: Tensor
    rewards: _containers.RepeatedScalarFieldContainer[float]
    is_first: _containers.RepeatedScalarFieldContainer[bool]
    terminated: _containers.RepeatedScalarFieldContainer[bool]
    truncated: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, observations: _Optional[_Union[Tensor, _Mapping]] = ..., rewards: _Optional[_Iterable[float]] = ..., is_first: _Optional[_Iterable[bool]] = ..., terminated: _Optional[_Iterable[bool]] = ..., truncated: _Optional[_Iterable[bool]] = ...) -> None: ...

class EnvResponse(_message.Message):
    __slots__ = ("spec", "timestep")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TIMESTEP_FIELD_NUMBER: _ClassVar[int]
    spec: EnvSpecMessage
    timestep: EnvTimestep
    def __init__(self, spec: _Optional[_Union[EnvSpecMessage, _Mapping]] = ..., timestep: _Optional[_Union[EnvTimestep, _Mapping]] = ...) -> None: ...
