"""A serving plan rendered as configuration that serving systems and Kubernetes read.

Pure functions from a :class:`~servewise.core.model.Plan` (plus a few fields the plan does not
carry: the rate it was sized for, names) to text:

- :func:`triton_config`: the ``config.pbtxt`` lines of Triton's dynamic batcher
  (``max_batch_size``, ``dynamic_batching { preferred_batch_size, max_queue_delay_microseconds }``,
  ``instance_group [{ count, kind }]``), protobuf text format.
- :func:`ray_serve_config`: a Ray Serve config file (``serve deploy``) with ``num_replicas`` and
  the ``@serve.batch`` settings as ``user_config``; :func:`ray_serve_decorator` is the decorator.
- :func:`torchserve_config`: TorchServe ``config.properties`` (``batchSize``, ``maxBatchDelay``,
  workers).
- :func:`hpa_manifest`: a Kubernetes ``autoscaling/v2`` HorizontalPodAutoscaler.

How the plan maps (ARCHITECTURE.md section 2: one FIFO queue feeding N replicas, each running
one batch of at most B requests at a time, waiting at most T for a batch to fill):

- B: Triton ``max_batch_size`` and ``preferred_batch_size``; Ray ``max_batch_size``; TorchServe
  ``batchSize``.
- T: Triton ``max_queue_delay_microseconds`` (T·1000); Ray ``batch_wait_timeout_s`` (T/1000);
  TorchServe ``maxBatchDelay`` (whole milliseconds).
- N: Triton ``instance_group`` ``count``; Ray ``num_replicas``; TorchServe ``minWorkers`` =
  ``maxWorkers``; the HPA's ``minReplicas`` (pods).

Triton's dynamic batcher feeding ``count`` model instances is exactly the planned queue; Ray
Serve replicas and pods behind a Kubernetes Service each keep their own queue, which makes the
tail somewhat worse than a shared queue at the same load, so check such a deployment with
``Simulate`` at the per-replica rate when the SLO is tight.

Nothing here does I/O; the CLI writes the files (``servewise plan --export-dir``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

import yaml

from servewise.core.model import Plan

__all__ = [
    "EXPORT_FILES",
    "AutoscalerExport",
    "ExportSettings",
    "dns_label",
    "hpa_manifest",
    "ray_serve_config",
    "ray_serve_decorator",
    "render_exports",
    "torchserve_config",
    "triton_config",
]

TRITON_KINDS: Final = ("KIND_GPU", "KIND_CPU", "KIND_AUTO")
HpaMetric = Literal["requests_per_second", "cpu"]
HPA_METRICS: Final[tuple[HpaMetric, ...]] = ("requests_per_second", "cpu")

# File names render_exports uses, in the order it returns them.
EXPORT_FILES: Final = ("config.pbtxt", "ray_serve.yaml", "torchserve.properties", "hpa.yaml")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class AutoscalerExport:
    """Autoscaling a plan's replicas (PlanResources' recommended autoscaler).

    ``target_rate_per_replica_s`` is one replica's capacity times the target utilisation: the
    per-pod rate the HPA holds; ``mean_latency_ms`` (at the peak) turns it into Ray Serve's
    ``target_ongoing_requests`` by Little's law (rate x latency).
    """

    min_replicas: int
    max_replicas: int
    target_rate_per_replica_s: float
    scale_up_window_s: float = 0.0
    scale_down_window_s: float = 300.0
    mean_latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got "
                f"{self.min_replicas} and {self.max_replicas}"
            )
        if not (
            math.isfinite(self.target_rate_per_replica_s) and self.target_rate_per_replica_s > 0
        ):
            raise ValueError("target_rate_per_replica_s must be finite and > 0")
        for name in ("scale_up_window_s", "scale_down_window_s", "mean_latency_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")

    @property
    def target_ongoing_requests(self) -> float:
        """Requests in flight per replica at the target rate (Little's law), at least 1."""
        ongoing = self.target_rate_per_replica_s * self.mean_latency_ms / 1000.0
        return max(1.0, round(ongoing, 2))


def dns_label(name: str) -> str:
    """A DNS-1123 label for ``name``: lower case, runs of other characters as ``-``, at most
    63 characters; ``model`` when nothing is left."""
    label = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63].strip("-")
    return label or "model"


def _check_plan(plan: Plan) -> None:
    if plan.max_batch_size < 1:
        raise ValueError(f"plan.max_batch_size must be >= 1, got {plan.max_batch_size}")
    if plan.replicas < 1:
        raise ValueError(f"plan.replicas must be >= 1, got {plan.replicas}")
    if not (math.isfinite(plan.max_queue_delay_ms) and plan.max_queue_delay_ms >= 0):
        raise ValueError(
            f"plan.max_queue_delay_ms must be finite and >= 0, got {plan.max_queue_delay_ms}"
        )


def _header(plan: Plan, *lines: str) -> str:
    out = [
        f"# Servewise plan: {plan.describe()}",
        *(f"# {line}" if line else "#" for line in lines),
    ]
    return "\n".join(out) + "\n"


def _delay_us(plan: Plan) -> int:
    return round(plan.max_queue_delay_ms * 1000.0)


def triton_config(
    plan: Plan,
    *,
    instance_kind: str = "KIND_GPU",
    instance_count: int | None = None,
) -> str:
    """The dynamic-batching part of a Triton ``config.pbtxt`` (protobuf text format).

    Parameters
    ----------
    plan:
        B becomes ``max_batch_size`` and the only ``preferred_batch_size``; T becomes
        ``max_queue_delay_microseconds`` (rounded to whole microseconds).
    instance_kind:
        ``KIND_GPU`` (default), ``KIND_CPU`` or ``KIND_AUTO``.
    instance_count:
        Model instances behind the batcher; the plan's replicas when omitted. (With
        ``KIND_GPU`` Triton starts ``count`` instances on each GPU it may use.)

    Returns
    -------
    str
        Lines to merge into the model's ``config.pbtxt``; ``name``, ``platform``, ``input`` and
        ``output`` stay as they are. A real-time plan (B=1, T=0) has no ``dynamic_batching``.

    Examples
    --------
    >>> "max_queue_delay_microseconds: 4000" in triton_config(Plan("g5", 16, 4.0, 3))
    True
    """
    _check_plan(plan)
    if instance_kind not in TRITON_KINDS:
        raise ValueError(f"instance_kind must be one of {', '.join(TRITON_KINDS)}")
    count = plan.replicas if instance_count is None else instance_count
    if count < 1:
        raise ValueError(f"instance_count must be >= 1, got {count}")
    text = _header(
        plan,
        "Merge into the model's config.pbtxt (name, platform, input, output stay as they are).",
        "One dynamic batcher feeds the instances: the plan's single queue and N replicas.",
    )
    text += f"max_batch_size: {plan.max_batch_size}\n"
    if plan.max_batch_size > 1 or plan.max_queue_delay_ms > 0:
        text += (
            "dynamic_batching {\n"
            f"  preferred_batch_size: [ {plan.max_batch_size} ]\n"
            f"  max_queue_delay_microseconds: {_delay_us(plan)}\n"
            "}\n"
        )
    text += f"instance_group [\n  {{\n    count: {count}\n    kind: {instance_kind}\n  }}\n]\n"
    return text


def ray_serve_decorator(plan: Plan) -> str:
    """``@serve.batch(max_batch_size=B, batch_wait_timeout_s=T/1000)``."""
    _check_plan(plan)
    timeout_s = plan.max_queue_delay_ms / 1000.0
    return f"@serve.batch(max_batch_size={plan.max_batch_size}, batch_wait_timeout_s={timeout_s:g})"


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)


def ray_serve_config(
    plan: Plan,
    *,
    app_name: str = "model",
    deployment_name: str = "Model",
    import_path: str = "app:app",
    route_prefix: str = "/",
    autoscaler: AutoscalerExport | None = None,
) -> str:
    """A Ray Serve config file (``serve deploy ray_serve.yaml``).

    ``num_replicas`` is N, or with ``autoscaler`` an ``autoscaling_config`` (min/max replicas,
    ``target_ongoing_requests`` by Little's law, ``upscale_delay_s`` / ``downscale_delay_s``
    from the stabilisation windows, ``initial_replicas`` N); the batch settings travel as
    ``user_config`` so a ``reconfigure`` method can apply them to the ``@serve.batch`` handler
    without redeploying (the comment at the top shows the deployment code).
    ``max_ongoing_requests`` is 2·B so a replica can queue the next batch while one runs.
    """
    _check_plan(plan)
    if not app_name or not deployment_name or ":" not in import_path:
        raise ValueError("app_name and deployment_name must be non-empty; import_path MODULE:APP")
    decorator = ray_serve_decorator(plan)
    header = _header(
        plan,
        "The deployment (Ray Serve applies user_config through reconfigure):",
        "",
        "  @serve.deployment",
        f"  class {deployment_name}:",
        f"      {decorator}",
        "      async def __call__(self, requests): ...",
        "",
        "      def reconfigure(self, config):",
        '          self.__call__.set_max_batch_size(config["max_batch_size"])',
        '          self.__call__.set_batch_wait_timeout_s(config["batch_wait_timeout_s"])',
    )
    deployment: dict[str, Any] = {"name": deployment_name}
    if autoscaler is None:
        deployment["num_replicas"] = plan.replicas
    else:
        deployment["autoscaling_config"] = {
            "min_replicas": autoscaler.min_replicas,
            "initial_replicas": min(
                max(plan.replicas, autoscaler.min_replicas), autoscaler.max_replicas
            ),
            "max_replicas": autoscaler.max_replicas,
            "target_ongoing_requests": autoscaler.target_ongoing_requests,
            "upscale_delay_s": autoscaler.scale_up_window_s,
            "downscale_delay_s": autoscaler.scale_down_window_s,
        }
    deployment["max_ongoing_requests"] = 2 * plan.max_batch_size
    deployment["user_config"] = {
        "max_batch_size": plan.max_batch_size,
        "batch_wait_timeout_s": plan.max_queue_delay_ms / 1000.0,
    }
    config = {
        "applications": [
            {
                "name": app_name,
                "route_prefix": route_prefix,
                "import_path": import_path,
                "deployments": [deployment],
            }
        ]
    }
    return header + _yaml(config)


def torchserve_config(
    plan: Plan,
    *,
    model_name: str = "model",
    mar_name: str | None = None,
    response_timeout_s: int = 120,
) -> str:
    """TorchServe ``config.properties`` lines: the model's ``batchSize``, ``maxBatchDelay``
    and ``minWorkers`` = ``maxWorkers`` = N (workers share the model's queue).

    TorchServe takes the delay in whole milliseconds: T is rounded to the nearest one (at
    least 1 ms when T > 0; halves up), and the header says so when that changed it.
    """
    _check_plan(plan)
    if not model_name:
        raise ValueError("model_name must be non-empty")
    delay_ms = math.floor(plan.max_queue_delay_ms + 0.5)  # half up, not to even
    if plan.max_queue_delay_ms > 0:
        delay_ms = max(delay_ms, 1)
    notes = [
        "Model settings for TorchServe's config.properties (or the same through the",
        "management API: POST /models?url=...&batch_size=B&max_batch_delay=T&initial_workers=N).",
    ]
    if delay_ms != plan.max_queue_delay_ms:
        notes.append(
            f"maxBatchDelay is whole milliseconds: the plan's {plan.max_queue_delay_ms:g} ms "
            f"is rounded to {delay_ms} ms."
        )
    models = {
        model_name: {
            "1.0": {
                "defaultVersion": True,
                "marName": mar_name or f"{model_name}.mar",
                "minWorkers": plan.replicas,
                "maxWorkers": plan.replicas,
                "batchSize": plan.max_batch_size,
                "maxBatchDelay": delay_ms,
                "responseTimeout": response_timeout_s,
            }
        }
    }
    return _header(plan, *notes) + f"models={json.dumps(models, separators=(',', ':'))}\n"


def _quantity(value: float) -> str:
    """A Kubernetes quantity for a per-pod target, rounded down to a thousandth."""
    milli = max(1, math.floor(value * 1000.0))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def hpa_manifest(
    plan: Plan,
    *,
    name: str = "model",
    rate_per_s: float,
    utilisation: float | None = None,
    namespace: str | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    metric: HpaMetric = "requests_per_second",
    metric_name: str = "requests_per_second",
    scale_up_window_s: int = 0,
    scale_down_window_s: int = 300,
    target_per_pod_per_s: float | None = None,
) -> str:
    """A Kubernetes ``autoscaling/v2`` HorizontalPodAutoscaler for the Deployment ``name``.

    Parameters
    ----------
    rate_per_s:
        The rate the plan was sized for.
    utilisation:
        The plan's rate / capacity (needed for ``metric="cpu"``).
    min_replicas, max_replicas:
        Default N (never fewer than the plan sized for this rate) and 2·N.
    metric:
        ``"requests_per_second"`` (default): a Pods metric ``metric_name`` whose average
        target is rate / N, the per-replica load the plan was checked at, so the HPA adds a
        replica for each rate / N of extra traffic (needs a custom-metrics adapter, e.g.
        prometheus-adapter). ``"cpu"``: CPU utilisation with the plan's utilisation (percent,
        rounded down) as the target.
    scale_up_window_s, scale_down_window_s:
        Stabilisation windows (Kubernetes' defaults: 0 and 300).
    target_per_pod_per_s:
        The per-pod rate to hold (an autoscaler's target: one replica's capacity times the
        target utilisation) instead of rate / N; for ``metric="cpu"`` the utilisation is then
        this over one replica's capacity, which ``utilisation`` must give (rate / capacity).
    """
    _check_plan(plan)
    if not _DNS_LABEL.match(name):
        raise ValueError(f"name must be a DNS-1123 label (a-z, 0-9, '-'), got {name!r}")
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"rate_per_s must be finite and > 0, got {rate_per_s!r}")
    low = plan.replicas if min_replicas is None else min_replicas
    high = 2 * plan.replicas if max_replicas is None else max_replicas
    if not 1 <= low <= high:
        raise ValueError(
            f"need 1 <= min_replicas <= max_replicas, got min {low} and max {high} "
            f"(the plan has {plan.replicas} replicas)"
        )
    if scale_up_window_s < 0 or scale_down_window_s < 0:
        raise ValueError("stabilisation windows must be >= 0")
    target: dict[str, Any]
    if target_per_pod_per_s is not None and not (
        math.isfinite(target_per_pod_per_s) and target_per_pod_per_s > 0
    ):
        raise ValueError(
            f"target_per_pod_per_s must be finite and > 0, got {target_per_pod_per_s!r}"
        )
    if metric == "requests_per_second":
        per_pod = (
            rate_per_s / plan.replicas if target_per_pod_per_s is None else target_per_pod_per_s
        )
        target = {
            "type": "Pods",
            "pods": {
                "metric": {"name": metric_name},
                "target": {"type": "AverageValue", "averageValue": _quantity(per_pod)},
            },
        }
        why = (
            f"target {per_pod:.4g} requests/s per pod: the load each replica was planned for"
            if target_per_pod_per_s is None
            else f"target {per_pod:.4g} requests/s per pod: the autoscaler's target load"
        )
    elif metric == "cpu":
        if utilisation is None or not (0 < utilisation <= 1):
            raise ValueError(f"metric='cpu' needs utilisation in (0, 1], got {utilisation!r}")
        if target_per_pod_per_s is not None:
            capacity = rate_per_s / utilisation / plan.replicas
            utilisation = min(1.0, target_per_pod_per_s / capacity)
        percent = max(1, math.floor(utilisation * 100))
        target = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": percent},
            },
        }
        why = f"target {percent}% CPU: the plan's utilisation (rate / capacity)"
    else:
        raise ValueError(f"metric must be one of {', '.join(HPA_METRICS)}, got {metric!r}")
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    manifest = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [target],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": scale_up_window_s},
                "scaleDown": {"stabilizationWindowSeconds": scale_down_window_s},
            },
        },
    }
    header = _header(
        plan,
        f"One pod per replica, sized for {rate_per_s:g} requests/s; {why}.",
    )
    return header + _yaml(manifest)


@dataclass(frozen=True)
class ExportSettings:
    """Names and choices :func:`render_exports` passes to each renderer."""

    name: str = "model"
    triton_instance_kind: str = "KIND_GPU"
    ray_import_path: str = "app:app"
    hpa_metric: HpaMetric = "requests_per_second"
    hpa_max_replicas: int | None = None
    namespace: str | None = None
    # Autoscaling (PlanResources): Ray's autoscaling_config and the HPA's min/max/target/windows.
    autoscaler: AutoscalerExport | None = None


def render_exports(
    plan: Plan,
    *,
    rate_per_s: float,
    utilisation: float | None = None,
    settings: ExportSettings | None = None,
) -> dict[str, str]:
    """Every export, keyed by the file name the CLI writes it to (:data:`EXPORT_FILES`)."""
    s = settings or ExportSettings()
    files = {
        "config.pbtxt": triton_config(plan, instance_kind=s.triton_instance_kind),
        "ray_serve.yaml": ray_serve_config(
            plan,
            app_name=s.name,
            deployment_name=_class_name(s.name),
            import_path=s.ray_import_path,
            autoscaler=s.autoscaler,
        ),
        "torchserve.properties": torchserve_config(plan, model_name=s.name),
        "hpa.yaml": _hpa(plan, rate_per_s, utilisation, s),
    }
    return {name: files[name] for name in EXPORT_FILES}


def _hpa(plan: Plan, rate_per_s: float, utilisation: float | None, s: ExportSettings) -> str:
    auto = s.autoscaler
    if auto is None:
        return hpa_manifest(
            plan,
            name=s.name,
            rate_per_s=rate_per_s,
            utilisation=utilisation,
            namespace=s.namespace,
            max_replicas=s.hpa_max_replicas,
            metric=s.hpa_metric,
        )
    return hpa_manifest(
        plan,
        name=s.name,
        rate_per_s=rate_per_s,
        utilisation=utilisation,
        namespace=s.namespace,
        min_replicas=max(1, auto.min_replicas),  # the HPA's minReplicas is at least 1
        max_replicas=max(auto.max_replicas, 1)
        if s.hpa_max_replicas is None
        else s.hpa_max_replicas,
        metric=s.hpa_metric,
        scale_up_window_s=math.ceil(auto.scale_up_window_s),
        scale_down_window_s=math.ceil(auto.scale_down_window_s),
        target_per_pod_per_s=auto.target_rate_per_replica_s,
    )


def _class_name(name: str) -> str:
    """``my-model`` -> ``MyModel``: a Python class name for the Ray deployment."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", name) if p]
    text = "".join(p[:1].upper() + p[1:] for p in parts) or "Model"
    return text if text[0].isalpha() else f"Model{text}"
