from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WeightOperationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ZEROFY: _ClassVar[WeightOperationType]
    REINITIALIZE: _ClassVar[WeightOperationType]
    FREEZE: _ClassVar[WeightOperationType]
    REMOVE_NEURONS: _ClassVar[WeightOperationType]
    ADD_NEURONS: _ClassVar[WeightOperationType]

class ZerofyPredicate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ZEROFY_PREDICATE_NONE: _ClassVar[ZerofyPredicate]
    ZEROFY_PREDICATE_WITH_FROZEN: _ClassVar[ZerofyPredicate]
    ZEROFY_PREDICATE_WITH_OLDER: _ClassVar[ZerofyPredicate]

class AgentIntentType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTENT_UNKNOWN: _ClassVar[AgentIntentType]
    INTENT_FILTER: _ClassVar[AgentIntentType]
    INTENT_ANALYSIS: _ClassVar[AgentIntentType]

class SampleEditType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EDIT_OVERRIDE: _ClassVar[SampleEditType]
    EDIT_ACCUMULATE: _ClassVar[SampleEditType]
    EDIT_REMOVE: _ClassVar[SampleEditType]

class AgentProviderType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROVIDER_OPENROUTER: _ClassVar[AgentProviderType]
    PROVIDER_OPENCODE: _ClassVar[AgentProviderType]
    PROVIDER_OLLAMA: _ClassVar[AgentProviderType]
ZEROFY: WeightOperationType
REINITIALIZE: WeightOperationType
FREEZE: WeightOperationType
REMOVE_NEURONS: WeightOperationType
ADD_NEURONS: WeightOperationType
ZEROFY_PREDICATE_NONE: ZerofyPredicate
ZEROFY_PREDICATE_WITH_FROZEN: ZerofyPredicate
ZEROFY_PREDICATE_WITH_OLDER: ZerofyPredicate
INTENT_UNKNOWN: AgentIntentType
INTENT_FILTER: AgentIntentType
INTENT_ANALYSIS: AgentIntentType
EDIT_OVERRIDE: SampleEditType
EDIT_ACCUMULATE: SampleEditType
EDIT_REMOVE: SampleEditType
PROVIDER_OPENROUTER: AgentProviderType
PROVIDER_OPENCODE: AgentProviderType
PROVIDER_OLLAMA: AgentProviderType

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NeuronId(_message.Message):
    __slots__ = ("layer_id", "neuron_id")
    LAYER_ID_FIELD_NUMBER: _ClassVar[int]
    NEURON_ID_FIELD_NUMBER: _ClassVar[int]
    layer_id: int
    neuron_id: int
    def __init__(self, layer_id: _Optional[int] = ..., neuron_id: _Optional[int] = ...) -> None: ...

class WeightOperation(_message.Message):
    __slots__ = ("op_type", "layer_id", "neuron_ids", "neurons_to_add", "zerofy_from_incoming_ids", "zerofy_to_neuron_ids", "zerofy_predicates")
    OP_TYPE_FIELD_NUMBER: _ClassVar[int]
    LAYER_ID_FIELD_NUMBER: _ClassVar[int]
    NEURON_IDS_FIELD_NUMBER: _ClassVar[int]
    NEURONS_TO_ADD_FIELD_NUMBER: _ClassVar[int]
    ZEROFY_FROM_INCOMING_IDS_FIELD_NUMBER: _ClassVar[int]
    ZEROFY_TO_NEURON_IDS_FIELD_NUMBER: _ClassVar[int]
    ZEROFY_PREDICATES_FIELD_NUMBER: _ClassVar[int]
    op_type: WeightOperationType
    layer_id: int
    neuron_ids: _containers.RepeatedCompositeFieldContainer[NeuronId]
    neurons_to_add: int
    zerofy_from_incoming_ids: _containers.RepeatedScalarFieldContainer[int]
    zerofy_to_neuron_ids: _containers.RepeatedScalarFieldContainer[int]
    zerofy_predicates: _containers.RepeatedScalarFieldContainer[ZerofyPredicate]
    def __init__(self, op_type: _Optional[_Union[WeightOperationType, str]] = ..., layer_id: _Optional[int] = ..., neuron_ids: _Optional[_Iterable[_Union[NeuronId, _Mapping]]] = ..., neurons_to_add: _Optional[int] = ..., zerofy_from_incoming_ids: _Optional[_Iterable[int]] = ..., zerofy_to_neuron_ids: _Optional[_Iterable[int]] = ..., zerofy_predicates: _Optional[_Iterable[_Union[ZerofyPredicate, str]]] = ...) -> None: ...

class WeightsOperationRequest(_message.Message):
    __slots__ = ("weight_operation",)
    WEIGHT_OPERATION_FIELD_NUMBER: _ClassVar[int]
    weight_operation: WeightOperation
    def __init__(self, weight_operation: _Optional[_Union[WeightOperation, _Mapping]] = ...) -> None: ...

class WeightsOperationResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class WeightsRequest(_message.Message):
    __slots__ = ("neuron_id",)
    NEURON_ID_FIELD_NUMBER: _ClassVar[int]
    neuron_id: NeuronId
    def __init__(self, neuron_id: _Optional[_Union[NeuronId, _Mapping]] = ...) -> None: ...

class WeightsResponse(_message.Message):
    __slots__ = ("neuron_id", "layer_name", "layer_type", "incoming", "outgoing", "kernel_size", "weights", "success", "error_message")
    NEURON_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_NAME_FIELD_NUMBER: _ClassVar[int]
    LAYER_TYPE_FIELD_NUMBER: _ClassVar[int]
    INCOMING_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    neuron_id: NeuronId
    layer_name: str
    layer_type: str
    incoming: int
    outgoing: int
    kernel_size: int
    weights: _containers.RepeatedScalarFieldContainer[float]
    success: bool
    error_message: str
    def __init__(self, neuron_id: _Optional[_Union[NeuronId, _Mapping]] = ..., layer_name: _Optional[str] = ..., layer_type: _Optional[str] = ..., incoming: _Optional[int] = ..., outgoing: _Optional[int] = ..., kernel_size: _Optional[int] = ..., weights: _Optional[_Iterable[float]] = ..., success: _Optional[bool] = ..., error_message: _Optional[str] = ...) -> None: ...

class ActivationRequest(_message.Message):
    __slots__ = ("layer_id", "sample_id", "origin")
    LAYER_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    layer_id: int
    sample_id: int
    origin: str
    def __init__(self, layer_id: _Optional[int] = ..., sample_id: _Optional[int] = ..., origin: _Optional[str] = ...) -> None: ...

class ActivationMap(_message.Message):
    __slots__ = ("neuron_id", "values", "H", "W")
    NEURON_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    H_FIELD_NUMBER: _ClassVar[int]
    W_FIELD_NUMBER: _ClassVar[int]
    neuron_id: int
    values: _containers.RepeatedScalarFieldContainer[float]
    H: int
    W: int
    def __init__(self, neuron_id: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ..., H: _Optional[int] = ..., W: _Optional[int] = ...) -> None: ...

class ActivationResponse(_message.Message):
    __slots__ = ("layer_type", "neurons_count", "activations")
    LAYER_TYPE_FIELD_NUMBER: _ClassVar[int]
    NEURONS_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    layer_type: str
    neurons_count: int
    activations: _containers.RepeatedCompositeFieldContainer[ActivationMap]
    def __init__(self, layer_type: _Optional[str] = ..., neurons_count: _Optional[int] = ..., activations: _Optional[_Iterable[_Union[ActivationMap, _Mapping]]] = ...) -> None: ...

class HyperParameters(_message.Message):
    __slots__ = ("experiment_name", "training_steps_to_do", "learning_rate", "batch_size", "full_eval_frequency", "checkpont_frequency", "is_training", "nb_steps", "auditor_mode", "train_batch_size", "val_batch_size", "test_batch_size", "evaluation_mode", "evaluation_config")
    EXPERIMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    TRAINING_STEPS_TO_DO_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    FULL_EVAL_FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    CHECKPONT_FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    IS_TRAINING_FIELD_NUMBER: _ClassVar[int]
    NB_STEPS_FIELD_NUMBER: _ClassVar[int]
    AUDITOR_MODE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    VAL_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TEST_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_MODE_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_CONFIG_FIELD_NUMBER: _ClassVar[int]
    experiment_name: str
    training_steps_to_do: int
    learning_rate: float
    batch_size: int
    full_eval_frequency: int
    checkpont_frequency: int
    is_training: bool
    nb_steps: int
    auditor_mode: bool
    train_batch_size: int
    val_batch_size: int
    test_batch_size: int
    evaluation_mode: bool
    evaluation_config: str
    def __init__(self, experiment_name: _Optional[str] = ..., training_steps_to_do: _Optional[int] = ..., learning_rate: _Optional[float] = ..., batch_size: _Optional[int] = ..., full_eval_frequency: _Optional[int] = ..., checkpont_frequency: _Optional[int] = ..., is_training: _Optional[bool] = ..., nb_steps: _Optional[int] = ..., auditor_mode: _Optional[bool] = ..., train_batch_size: _Optional[int] = ..., val_batch_size: _Optional[int] = ..., test_batch_size: _Optional[int] = ..., evaluation_mode: _Optional[bool] = ..., evaluation_config: _Optional[str] = ...) -> None: ...

class MetricsStatus(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class AnnotatStatus(_message.Message):
    __slots__ = ("name", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    metadata: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., metadata: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TrainingStatusEx(_message.Message):
    __slots__ = ("timestamp", "experiment_name", "model_age", "metrics_status", "annotat_status")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_AGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_STATUS_FIELD_NUMBER: _ClassVar[int]
    ANNOTAT_STATUS_FIELD_NUMBER: _ClassVar[int]
    timestamp: str
    experiment_name: str
    model_age: int
    metrics_status: MetricsStatus
    annotat_status: AnnotatStatus
    def __init__(self, timestamp: _Optional[str] = ..., experiment_name: _Optional[str] = ..., model_age: _Optional[int] = ..., metrics_status: _Optional[_Union[MetricsStatus, _Mapping]] = ..., annotat_status: _Optional[_Union[AnnotatStatus, _Mapping]] = ...) -> None: ...

class HyperParameterCommand(_message.Message):
    __slots__ = ("hyper_parameters",)
    HYPER_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    hyper_parameters: HyperParameters
    def __init__(self, hyper_parameters: _Optional[_Union[HyperParameters, _Mapping]] = ...) -> None: ...

class DenySamplesOperation(_message.Message):
    __slots__ = ("sample_ids", "accumulate")
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATE_FIELD_NUMBER: _ClassVar[int]
    sample_ids: _containers.RepeatedScalarFieldContainer[int]
    accumulate: bool
    def __init__(self, sample_ids: _Optional[_Iterable[int]] = ..., accumulate: _Optional[bool] = ...) -> None: ...

class LoadCheckpointOperation(_message.Message):
    __slots__ = ("checkpoint_id",)
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    checkpoint_id: int
    def __init__(self, checkpoint_id: _Optional[int] = ...) -> None: ...

class PlotNoteOperation(_message.Message):
    __slots__ = ("metric_name", "experiment_hash", "model_age", "note")
    METRIC_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    MODEL_AGE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    metric_name: str
    experiment_hash: str
    model_age: int
    note: str
    def __init__(self, metric_name: _Optional[str] = ..., experiment_hash: _Optional[str] = ..., model_age: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...

class SaveCheckpointOperation(_message.Message):
    __slots__ = ("save_architecture", "save_optimizer")
    SAVE_ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SAVE_OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    save_architecture: bool
    save_optimizer: bool
    def __init__(self, save_architecture: _Optional[bool] = ..., save_optimizer: _Optional[bool] = ...) -> None: ...

class RestartInstanceOperation(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainerCommand(_message.Message):
    __slots__ = ("get_hyper_parameters", "get_interactive_layers", "get_data_records", "get_single_layer_info_id", "hyper_parameter_change", "deny_samples_operation", "deny_eval_samples_operation", "load_checkpoint_operation", "remove_from_denylist_operation", "remove_eval_from_denylist_operation", "plot_note_operation", "save_checkpoint_operation", "restart_operation")
    GET_HYPER_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    GET_INTERACTIVE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    GET_DATA_RECORDS_FIELD_NUMBER: _ClassVar[int]
    GET_SINGLE_LAYER_INFO_ID_FIELD_NUMBER: _ClassVar[int]
    HYPER_PARAMETER_CHANGE_FIELD_NUMBER: _ClassVar[int]
    DENY_SAMPLES_OPERATION_FIELD_NUMBER: _ClassVar[int]
    DENY_EVAL_SAMPLES_OPERATION_FIELD_NUMBER: _ClassVar[int]
    LOAD_CHECKPOINT_OPERATION_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FROM_DENYLIST_OPERATION_FIELD_NUMBER: _ClassVar[int]
    REMOVE_EVAL_FROM_DENYLIST_OPERATION_FIELD_NUMBER: _ClassVar[int]
    PLOT_NOTE_OPERATION_FIELD_NUMBER: _ClassVar[int]
    SAVE_CHECKPOINT_OPERATION_FIELD_NUMBER: _ClassVar[int]
    RESTART_OPERATION_FIELD_NUMBER: _ClassVar[int]
    get_hyper_parameters: bool
    get_interactive_layers: bool
    get_data_records: str
    get_single_layer_info_id: int
    hyper_parameter_change: HyperParameterCommand
    deny_samples_operation: DenySamplesOperation
    deny_eval_samples_operation: DenySamplesOperation
    load_checkpoint_operation: LoadCheckpointOperation
    remove_from_denylist_operation: DenySamplesOperation
    remove_eval_from_denylist_operation: DenySamplesOperation
    plot_note_operation: PlotNoteOperation
    save_checkpoint_operation: SaveCheckpointOperation
    restart_operation: RestartInstanceOperation
    def __init__(self, get_hyper_parameters: _Optional[bool] = ..., get_interactive_layers: _Optional[bool] = ..., get_data_records: _Optional[str] = ..., get_single_layer_info_id: _Optional[int] = ..., hyper_parameter_change: _Optional[_Union[HyperParameterCommand, _Mapping]] = ..., deny_samples_operation: _Optional[_Union[DenySamplesOperation, _Mapping]] = ..., deny_eval_samples_operation: _Optional[_Union[DenySamplesOperation, _Mapping]] = ..., load_checkpoint_operation: _Optional[_Union[LoadCheckpointOperation, _Mapping]] = ..., remove_from_denylist_operation: _Optional[_Union[DenySamplesOperation, _Mapping]] = ..., remove_eval_from_denylist_operation: _Optional[_Union[DenySamplesOperation, _Mapping]] = ..., plot_note_operation: _Optional[_Union[PlotNoteOperation, _Mapping]] = ..., save_checkpoint_operation: _Optional[_Union[SaveCheckpointOperation, _Mapping]] = ..., restart_operation: _Optional[_Union[RestartInstanceOperation, _Mapping]] = ...) -> None: ...

class HyperParameterDesc(_message.Message):
    __slots__ = ("label", "name", "type", "numerical_value", "string_value")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NUMERICAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    label: str
    name: str
    type: str
    numerical_value: float
    string_value: str
    def __init__(self, label: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., numerical_value: _Optional[float] = ..., string_value: _Optional[str] = ...) -> None: ...

class NeuronStatistics(_message.Message):
    __slots__ = ("neuron_id", "neuron_age", "train_trigger_rate", "eval_trigger_rate", "learning_rate", "incoming_lr")
    class IncomingLrEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    NEURON_ID_FIELD_NUMBER: _ClassVar[int]
    NEURON_AGE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TRIGGER_RATE_FIELD_NUMBER: _ClassVar[int]
    EVAL_TRIGGER_RATE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    INCOMING_LR_FIELD_NUMBER: _ClassVar[int]
    neuron_id: NeuronId
    neuron_age: int
    train_trigger_rate: float
    eval_trigger_rate: float
    learning_rate: float
    incoming_lr: _containers.ScalarMap[int, float]
    def __init__(self, neuron_id: _Optional[_Union[NeuronId, _Mapping]] = ..., neuron_age: _Optional[int] = ..., train_trigger_rate: _Optional[float] = ..., eval_trigger_rate: _Optional[float] = ..., learning_rate: _Optional[float] = ..., incoming_lr: _Optional[_Mapping[int, float]] = ...) -> None: ...

class LayerRepresentation(_message.Message):
    __slots__ = ("layer_id", "layer_name", "layer_type", "neurons_count", "incoming_neurons_count", "kernel_size", "stride", "neurons_statistics")
    LAYER_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_NAME_FIELD_NUMBER: _ClassVar[int]
    LAYER_TYPE_FIELD_NUMBER: _ClassVar[int]
    NEURONS_COUNT_FIELD_NUMBER: _ClassVar[int]
    INCOMING_NEURONS_COUNT_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    NEURONS_STATISTICS_FIELD_NUMBER: _ClassVar[int]
    layer_id: int
    layer_name: str
    layer_type: str
    neurons_count: int
    incoming_neurons_count: int
    kernel_size: int
    stride: int
    neurons_statistics: _containers.RepeatedCompositeFieldContainer[NeuronStatistics]
    def __init__(self, layer_id: _Optional[int] = ..., layer_name: _Optional[str] = ..., layer_type: _Optional[str] = ..., neurons_count: _Optional[int] = ..., incoming_neurons_count: _Optional[int] = ..., kernel_size: _Optional[int] = ..., stride: _Optional[int] = ..., neurons_statistics: _Optional[_Iterable[_Union[NeuronStatistics, _Mapping]]] = ...) -> None: ...

class TaskField(_message.Message):
    __slots__ = ("name", "float_value", "int_value", "string_value", "bytes_value", "bool_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BYTES_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    float_value: float
    int_value: int
    string_value: str
    bytes_value: bytes
    bool_value: bool
    def __init__(self, name: _Optional[str] = ..., float_value: _Optional[float] = ..., int_value: _Optional[int] = ..., string_value: _Optional[str] = ..., bytes_value: _Optional[bytes] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class RecordMetadata(_message.Message):
    __slots__ = ("sample_id", "sample_label", "sample_prediction", "sample_last_loss", "sample_encounters", "sample_discarded", "extra_fields", "prediction_raw", "task_type")
    class SampleLastLossEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_LABEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_PREDICTION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_LAST_LOSS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_ENCOUNTERS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_DISCARDED_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELDS_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_RAW_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    sample_id: int
    sample_label: _containers.RepeatedScalarFieldContainer[int]
    sample_prediction: _containers.RepeatedScalarFieldContainer[int]
    sample_last_loss: _containers.ScalarMap[str, float]
    sample_encounters: int
    sample_discarded: bool
    extra_fields: _containers.RepeatedCompositeFieldContainer[TaskField]
    prediction_raw: bytes
    task_type: str
    def __init__(self, sample_id: _Optional[int] = ..., sample_label: _Optional[_Iterable[int]] = ..., sample_prediction: _Optional[_Iterable[int]] = ..., sample_last_loss: _Optional[_Mapping[str, float]] = ..., sample_encounters: _Optional[int] = ..., sample_discarded: _Optional[bool] = ..., extra_fields: _Optional[_Iterable[_Union[TaskField, _Mapping]]] = ..., prediction_raw: _Optional[bytes] = ..., task_type: _Optional[str] = ...) -> None: ...

class SampleStatistics(_message.Message):
    __slots__ = ("origin", "sample_count", "task_type", "records")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    origin: str
    sample_count: int
    task_type: str
    records: _containers.RepeatedCompositeFieldContainer[RecordMetadata]
    def __init__(self, origin: _Optional[str] = ..., sample_count: _Optional[int] = ..., task_type: _Optional[str] = ..., records: _Optional[_Iterable[_Union[RecordMetadata, _Mapping]]] = ...) -> None: ...

class CommandResponse(_message.Message):
    __slots__ = ("success", "message", "hyper_parameters_descs", "layer_representations", "sample_statistics")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HYPER_PARAMETERS_DESCS_FIELD_NUMBER: _ClassVar[int]
    LAYER_REPRESENTATIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_STATISTICS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    hyper_parameters_descs: _containers.RepeatedCompositeFieldContainer[HyperParameterDesc]
    layer_representations: _containers.RepeatedCompositeFieldContainer[LayerRepresentation]
    sample_statistics: SampleStatistics
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., hyper_parameters_descs: _Optional[_Iterable[_Union[HyperParameterDesc, _Mapping]]] = ..., layer_representations: _Optional[_Iterable[_Union[LayerRepresentation, _Mapping]]] = ..., sample_statistics: _Optional[_Union[SampleStatistics, _Mapping]] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("sample_id", "origin")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    sample_id: int
    origin: str
    def __init__(self, sample_id: _Optional[int] = ..., origin: _Optional[str] = ...) -> None: ...

class SampleRequestResponse(_message.Message):
    __slots__ = ("sample_id", "origin", "label", "data", "error_message", "raw_data", "mask", "prediction")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RAW_DATA_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    sample_id: int
    origin: str
    label: int
    data: bytes
    error_message: str
    raw_data: bytes
    mask: bytes
    prediction: bytes
    def __init__(self, sample_id: _Optional[int] = ..., origin: _Optional[str] = ..., label: _Optional[int] = ..., data: _Optional[bytes] = ..., error_message: _Optional[str] = ..., raw_data: _Optional[bytes] = ..., mask: _Optional[bytes] = ..., prediction: _Optional[bytes] = ...) -> None: ...

class BatchSampleRequest(_message.Message):
    __slots__ = ("sample_ids", "origin", "resize_width", "resize_height")
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    RESIZE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    RESIZE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    sample_ids: _containers.RepeatedScalarFieldContainer[int]
    origin: str
    resize_width: int
    resize_height: int
    def __init__(self, sample_ids: _Optional[_Iterable[int]] = ..., origin: _Optional[str] = ..., resize_width: _Optional[int] = ..., resize_height: _Optional[int] = ...) -> None: ...

class BatchSampleResponse(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[SampleRequestResponse]
    def __init__(self, samples: _Optional[_Iterable[_Union[SampleRequestResponse, _Mapping]]] = ...) -> None: ...

class DataQueryRequest(_message.Message):
    __slots__ = ("query", "accumulate", "is_natural_language")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATE_FIELD_NUMBER: _ClassVar[int]
    IS_NATURAL_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    query: str
    accumulate: bool
    is_natural_language: bool
    def __init__(self, query: _Optional[str] = ..., accumulate: _Optional[bool] = ..., is_natural_language: _Optional[bool] = ...) -> None: ...

class CategoricalTag(_message.Message):
    __slots__ = ("name", "categories")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ...) -> None: ...

class DataQueryResponse(_message.Message):
    __slots__ = ("success", "message", "number_of_all_samples", "number_of_samples_in_the_loop", "number_of_discarded_samples", "unique_tags", "agent_intent_type", "analysis_result", "categorical_tags")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_OF_ALL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUMBER_OF_SAMPLES_IN_THE_LOOP_FIELD_NUMBER: _ClassVar[int]
    NUMBER_OF_DISCARDED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_TAGS_FIELD_NUMBER: _ClassVar[int]
    AGENT_INTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_RESULT_FIELD_NUMBER: _ClassVar[int]
    CATEGORICAL_TAGS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    number_of_all_samples: int
    number_of_samples_in_the_loop: int
    number_of_discarded_samples: int
    unique_tags: _containers.RepeatedScalarFieldContainer[str]
    agent_intent_type: AgentIntentType
    analysis_result: str
    categorical_tags: _containers.RepeatedCompositeFieldContainer[CategoricalTag]
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., number_of_all_samples: _Optional[int] = ..., number_of_samples_in_the_loop: _Optional[int] = ..., number_of_discarded_samples: _Optional[int] = ..., unique_tags: _Optional[_Iterable[str]] = ..., agent_intent_type: _Optional[_Union[AgentIntentType, str]] = ..., analysis_result: _Optional[str] = ..., categorical_tags: _Optional[_Iterable[_Union[CategoricalTag, _Mapping]]] = ...) -> None: ...

class DataSamplesRequest(_message.Message):
    __slots__ = ("start_index", "records_cnt", "include_transformed_data", "include_raw_data", "stats_to_retrieve", "resize_width", "resize_height")
    START_INDEX_FIELD_NUMBER: _ClassVar[int]
    RECORDS_CNT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TRANSFORMED_DATA_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_RAW_DATA_FIELD_NUMBER: _ClassVar[int]
    STATS_TO_RETRIEVE_FIELD_NUMBER: _ClassVar[int]
    RESIZE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    RESIZE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    start_index: int
    records_cnt: int
    include_transformed_data: bool
    include_raw_data: bool
    stats_to_retrieve: _containers.RepeatedScalarFieldContainer[str]
    resize_width: int
    resize_height: int
    def __init__(self, start_index: _Optional[int] = ..., records_cnt: _Optional[int] = ..., include_transformed_data: _Optional[bool] = ..., include_raw_data: _Optional[bool] = ..., stats_to_retrieve: _Optional[_Iterable[str]] = ..., resize_width: _Optional[int] = ..., resize_height: _Optional[int] = ...) -> None: ...

class DataStat(_message.Message):
    __slots__ = ("name", "type", "shape", "value", "value_string", "thumbnail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VALUE_STRING_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    value: _containers.RepeatedScalarFieldContainer[float]
    value_string: str
    thumbnail: bytes
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., value: _Optional[_Iterable[float]] = ..., value_string: _Optional[str] = ..., thumbnail: _Optional[bytes] = ...) -> None: ...

class DataRecord(_message.Message):
    __slots__ = ("sample_id", "data_stats")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_STATS_FIELD_NUMBER: _ClassVar[int]
    sample_id: int
    data_stats: _containers.RepeatedCompositeFieldContainer[DataStat]
    def __init__(self, sample_id: _Optional[int] = ..., data_stats: _Optional[_Iterable[_Union[DataStat, _Mapping]]] = ...) -> None: ...

class DataSamplesResponse(_message.Message):
    __slots__ = ("success", "message", "data_records")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_RECORDS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    data_records: _containers.RepeatedCompositeFieldContainer[DataRecord]
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., data_records: _Optional[_Iterable[_Union[DataRecord, _Mapping]]] = ...) -> None: ...

class DataEditsRequest(_message.Message):
    __slots__ = ("stat_name", "float_value", "string_value", "bool_value", "type", "samples_ids", "sample_origins")
    STAT_NAME_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_ORIGINS_FIELD_NUMBER: _ClassVar[int]
    stat_name: str
    float_value: float
    string_value: str
    bool_value: bool
    type: SampleEditType
    samples_ids: _containers.RepeatedScalarFieldContainer[int]
    sample_origins: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, stat_name: _Optional[str] = ..., float_value: _Optional[float] = ..., string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ..., type: _Optional[_Union[SampleEditType, str]] = ..., samples_ids: _Optional[_Iterable[int]] = ..., sample_origins: _Optional[_Iterable[str]] = ...) -> None: ...

class DataEditsResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class DataSplitsResponse(_message.Message):
    __slots__ = ("success", "split_names")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_NAMES_FIELD_NUMBER: _ClassVar[int]
    success: bool
    split_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, success: _Optional[bool] = ..., split_names: _Optional[_Iterable[str]] = ...) -> None: ...

class GetLatestLoggerDataRequest(_message.Message):
    __slots__ = ("request_full_history", "max_points", "break_by_slices", "tags", "graph_name", "x_min", "x_max", "has_x_range", "metric_names", "experiment_hashes", "index_only")
    REQUEST_FULL_HISTORY_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    BREAK_BY_SLICES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_NAME_FIELD_NUMBER: _ClassVar[int]
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    HAS_X_RANGE_FIELD_NUMBER: _ClassVar[int]
    METRIC_NAMES_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_HASHES_FIELD_NUMBER: _ClassVar[int]
    INDEX_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_full_history: bool
    max_points: int
    break_by_slices: bool
    tags: _containers.RepeatedScalarFieldContainer[str]
    graph_name: str
    x_min: int
    x_max: int
    has_x_range: bool
    metric_names: _containers.RepeatedScalarFieldContainer[str]
    experiment_hashes: _containers.RepeatedScalarFieldContainer[str]
    index_only: bool
    def __init__(self, request_full_history: _Optional[bool] = ..., max_points: _Optional[int] = ..., break_by_slices: _Optional[bool] = ..., tags: _Optional[_Iterable[str]] = ..., graph_name: _Optional[str] = ..., x_min: _Optional[int] = ..., x_max: _Optional[int] = ..., has_x_range: _Optional[bool] = ..., metric_names: _Optional[_Iterable[str]] = ..., experiment_hashes: _Optional[_Iterable[str]] = ..., index_only: _Optional[bool] = ...) -> None: ...

class SignalOutlier(_message.Message):
    __slots__ = ("sample_id", "value")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    value: float
    def __init__(self, sample_id: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class LoggerDataPoint(_message.Message):
    __slots__ = ("metric_name", "model_age", "metric_value", "experiment_hash", "timestamp", "sample_id", "is_evaluation_marker", "split_name", "evaluation_tags", "point_note", "audit_mode", "outliers", "outlier_count", "sample_count", "trend_value", "trend_margin", "has_trend_band", "value_min", "value_max", "has_value_range")
    METRIC_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_AGE_FIELD_NUMBER: _ClassVar[int]
    METRIC_VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    IS_EVALUATION_MARKER_FIELD_NUMBER: _ClassVar[int]
    SPLIT_NAME_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_TAGS_FIELD_NUMBER: _ClassVar[int]
    POINT_NOTE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_MODE_FIELD_NUMBER: _ClassVar[int]
    OUTLIERS_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_COUNT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TREND_VALUE_FIELD_NUMBER: _ClassVar[int]
    TREND_MARGIN_FIELD_NUMBER: _ClassVar[int]
    HAS_TREND_BAND_FIELD_NUMBER: _ClassVar[int]
    VALUE_MIN_FIELD_NUMBER: _ClassVar[int]
    VALUE_MAX_FIELD_NUMBER: _ClassVar[int]
    HAS_VALUE_RANGE_FIELD_NUMBER: _ClassVar[int]
    metric_name: str
    model_age: int
    metric_value: float
    experiment_hash: str
    timestamp: int
    sample_id: str
    is_evaluation_marker: bool
    split_name: str
    evaluation_tags: _containers.RepeatedScalarFieldContainer[str]
    point_note: str
    audit_mode: bool
    outliers: _containers.RepeatedCompositeFieldContainer[SignalOutlier]
    outlier_count: int
    sample_count: int
    trend_value: float
    trend_margin: float
    has_trend_band: bool
    value_min: float
    value_max: float
    has_value_range: bool
    def __init__(self, metric_name: _Optional[str] = ..., model_age: _Optional[int] = ..., metric_value: _Optional[float] = ..., experiment_hash: _Optional[str] = ..., timestamp: _Optional[int] = ..., sample_id: _Optional[str] = ..., is_evaluation_marker: _Optional[bool] = ..., split_name: _Optional[str] = ..., evaluation_tags: _Optional[_Iterable[str]] = ..., point_note: _Optional[str] = ..., audit_mode: _Optional[bool] = ..., outliers: _Optional[_Iterable[_Union[SignalOutlier, _Mapping]]] = ..., outlier_count: _Optional[int] = ..., sample_count: _Optional[int] = ..., trend_value: _Optional[float] = ..., trend_margin: _Optional[float] = ..., has_trend_band: _Optional[bool] = ..., value_min: _Optional[float] = ..., value_max: _Optional[float] = ..., has_value_range: _Optional[bool] = ...) -> None: ...

class SignalCurveIndex(_message.Message):
    __slots__ = ("metric_name", "experiment_hash", "first_step", "last_step", "point_count", "value_min", "value_max")
    METRIC_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    FIRST_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    POINT_COUNT_FIELD_NUMBER: _ClassVar[int]
    VALUE_MIN_FIELD_NUMBER: _ClassVar[int]
    VALUE_MAX_FIELD_NUMBER: _ClassVar[int]
    metric_name: str
    experiment_hash: str
    first_step: int
    last_step: int
    point_count: int
    value_min: float
    value_max: float
    def __init__(self, metric_name: _Optional[str] = ..., experiment_hash: _Optional[str] = ..., first_step: _Optional[int] = ..., last_step: _Optional[int] = ..., point_count: _Optional[int] = ..., value_min: _Optional[float] = ..., value_max: _Optional[float] = ...) -> None: ...

class GetLatestLoggerDataResponse(_message.Message):
    __slots__ = ("points", "weightslab_version", "curves", "applied_max_points")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTSLAB_VERSION_FIELD_NUMBER: _ClassVar[int]
    CURVES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[LoggerDataPoint]
    weightslab_version: str
    curves: _containers.RepeatedCompositeFieldContainer[SignalCurveIndex]
    applied_max_points: int
    def __init__(self, points: _Optional[_Iterable[_Union[LoggerDataPoint, _Mapping]]] = ..., weightslab_version: _Optional[str] = ..., curves: _Optional[_Iterable[_Union[SignalCurveIndex, _Mapping]]] = ..., applied_max_points: _Optional[int] = ...) -> None: ...

class GetSignalTrajectoryRequest(_message.Message):
    __slots__ = ("signal_name", "sample_ids", "max_points")
    SIGNAL_NAME_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    signal_name: str
    sample_ids: _containers.RepeatedScalarFieldContainer[str]
    max_points: int
    def __init__(self, signal_name: _Optional[str] = ..., sample_ids: _Optional[_Iterable[str]] = ..., max_points: _Optional[int] = ...) -> None: ...

class SignalTrajectory(_message.Message):
    __slots__ = ("sample_id", "value")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    value: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, sample_id: _Optional[str] = ..., value: _Optional[_Iterable[float]] = ...) -> None: ...

class GetSignalTrajectoryResponse(_message.Message):
    __slots__ = ("success", "message", "signal_name", "trajectories")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_NAME_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    signal_name: str
    trajectories: _containers.RepeatedCompositeFieldContainer[SignalTrajectory]
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., signal_name: _Optional[str] = ..., trajectories: _Optional[_Iterable[_Union[SignalTrajectory, _Mapping]]] = ...) -> None: ...

class StepSamplesRequest(_message.Message):
    __slots__ = ("metric_name", "experiment_hash", "model_age", "max_samples")
    METRIC_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    MODEL_AGE_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    metric_name: str
    experiment_hash: str
    model_age: int
    max_samples: int
    def __init__(self, metric_name: _Optional[str] = ..., experiment_hash: _Optional[str] = ..., model_age: _Optional[int] = ..., max_samples: _Optional[int] = ...) -> None: ...

class StepSamplesResponse(_message.Message):
    __slots__ = ("success", "message", "sample_ids", "total_available", "sample_values")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_VALUES_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    sample_ids: _containers.RepeatedScalarFieldContainer[str]
    total_available: int
    sample_values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., sample_ids: _Optional[_Iterable[str]] = ..., total_available: _Optional[int] = ..., sample_values: _Optional[_Iterable[float]] = ...) -> None: ...

class RestoreCheckpointRequest(_message.Message):
    __slots__ = ("experiment_hash",)
    EXPERIMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    experiment_hash: str
    def __init__(self, experiment_hash: _Optional[str] = ...) -> None: ...

class RestoreCheckpointResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class ListExperimentRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExperimentRunInfo(_message.Message):
    __slots__ = ("experiment_hash", "experiment_name", "notes", "created", "last_used", "latest_weight_step", "is_current")
    EXPERIMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    LATEST_WEIGHT_STEP_FIELD_NUMBER: _ClassVar[int]
    IS_CURRENT_FIELD_NUMBER: _ClassVar[int]
    experiment_hash: str
    experiment_name: str
    notes: str
    created: str
    last_used: str
    latest_weight_step: int
    is_current: bool
    def __init__(self, experiment_hash: _Optional[str] = ..., experiment_name: _Optional[str] = ..., notes: _Optional[str] = ..., created: _Optional[str] = ..., last_used: _Optional[str] = ..., latest_weight_step: _Optional[int] = ..., is_current: _Optional[bool] = ...) -> None: ...

class ListExperimentRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[ExperimentRunInfo]
    def __init__(self, runs: _Optional[_Iterable[_Union[ExperimentRunInfo, _Mapping]]] = ...) -> None: ...

class RenameExperimentRunRequest(_message.Message):
    __slots__ = ("experiment_hash", "new_name")
    EXPERIMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    NEW_NAME_FIELD_NUMBER: _ClassVar[int]
    experiment_hash: str
    new_name: str
    def __init__(self, experiment_hash: _Optional[str] = ..., new_name: _Optional[str] = ...) -> None: ...

class RenameExperimentRunResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class SetExperimentRunNotesRequest(_message.Message):
    __slots__ = ("experiment_hash", "notes")
    EXPERIMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    experiment_hash: str
    notes: str
    def __init__(self, experiment_hash: _Optional[str] = ..., notes: _Optional[str] = ...) -> None: ...

class SetExperimentRunNotesResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class HistogramRequest(_message.Message):
    __slots__ = ("column", "max_bins")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    MAX_BINS_FIELD_NUMBER: _ClassVar[int]
    column: str
    max_bins: int
    def __init__(self, column: _Optional[str] = ..., max_bins: _Optional[int] = ...) -> None: ...

class HistogramSubBar(_message.Message):
    __slots__ = ("origin", "discarded", "count")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    origin: str
    discarded: bool
    count: int
    def __init__(self, origin: _Optional[str] = ..., discarded: _Optional[bool] = ..., count: _Optional[int] = ...) -> None: ...

class HistogramBin(_message.Message):
    __slots__ = ("min", "max", "avg", "count", "sub_bars")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    AVG_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUB_BARS_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    avg: float
    count: int
    sub_bars: _containers.RepeatedCompositeFieldContainer[HistogramSubBar]
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ..., avg: _Optional[float] = ..., count: _Optional[int] = ..., sub_bars: _Optional[_Iterable[_Union[HistogramSubBar, _Mapping]]] = ...) -> None: ...

class CategoricalHistogramBar(_message.Message):
    __slots__ = ("label", "count", "sub_bars")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUB_BARS_FIELD_NUMBER: _ClassVar[int]
    label: str
    count: int
    sub_bars: _containers.RepeatedCompositeFieldContainer[HistogramSubBar]
    def __init__(self, label: _Optional[str] = ..., count: _Optional[int] = ..., sub_bars: _Optional[_Iterable[_Union[HistogramSubBar, _Mapping]]] = ...) -> None: ...

class HistogramResponse(_message.Message):
    __slots__ = ("success", "message", "total_rows", "bins", "is_categorical", "categorical_bars")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    IS_CATEGORICAL_FIELD_NUMBER: _ClassVar[int]
    CATEGORICAL_BARS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    total_rows: int
    bins: _containers.RepeatedCompositeFieldContainer[HistogramBin]
    is_categorical: bool
    categorical_bars: _containers.RepeatedCompositeFieldContainer[CategoricalHistogramBar]
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., total_rows: _Optional[int] = ..., bins: _Optional[_Iterable[_Union[HistogramBin, _Mapping]]] = ..., is_categorical: _Optional[bool] = ..., categorical_bars: _Optional[_Iterable[_Union[CategoricalHistogramBar, _Mapping]]] = ...) -> None: ...

class TriggerEvaluationRequest(_message.Message):
    __slots__ = ("split_name", "tags", "use_full_set")
    SPLIT_NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    USE_FULL_SET_FIELD_NUMBER: _ClassVar[int]
    split_name: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    use_full_set: bool
    def __init__(self, split_name: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., use_full_set: _Optional[bool] = ...) -> None: ...

class TriggerEvaluationResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class GetEvaluationStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetEvaluationStatusResponse(_message.Message):
    __slots__ = ("status", "current", "total", "message", "error", "split_name")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SPLIT_NAME_FIELD_NUMBER: _ClassVar[int]
    status: str
    current: int
    total: int
    message: str
    error: str
    split_name: str
    def __init__(self, status: _Optional[str] = ..., current: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ..., error: _Optional[str] = ..., split_name: _Optional[str] = ...) -> None: ...

class CancelEvaluationRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class CancelEvaluationResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class AgentHealthResponse(_message.Message):
    __slots__ = ("available", "message")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    available: bool
    message: str
    def __init__(self, available: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class InitializeAgentRequest(_message.Message):
    __slots__ = ("api_key", "provider", "model")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    provider: AgentProviderType
    model: str
    def __init__(self, api_key: _Optional[str] = ..., provider: _Optional[_Union[AgentProviderType, str]] = ..., model: _Optional[str] = ...) -> None: ...

class InitializeAgentResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class ChangeAgentModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ChangeAgentModelResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class GetAgentModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetAgentModelsResponse(_message.Message):
    __slots__ = ("success", "models", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    models: _containers.RepeatedScalarFieldContainer[str]
    message: str
    def __init__(self, success: _Optional[bool] = ..., models: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ...) -> None: ...

class ResetAgentResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...
