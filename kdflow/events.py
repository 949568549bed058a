"""Names of the events the pipeline emits, declared once: the drift check emits them (tasks.monitoring), the
retrain deployment's trigger expects them (flows.deployments, and prefect.yaml generated from it).

Plain strings, no Prefect import: the library only names events; tasks emit them."""

DRIFT_EVENT = "kdflow.drift.detected"  # a drift check decided to retrain
TEACHER_DEGRADED_EVENT = "kdflow.teacher.degraded"  # a drift check decided to refresh the teacher
MODEL_RESOURCE_PREFIX = "kdflow.model."  # an event's resource id: this prefix + the registered model name
