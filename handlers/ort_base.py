"""ONNX Runtime base handler for TorchServe.

Shipped inside every .mar next to the model handler (torch-model-archiver --extra-files),
so it imports only the standard library, numpy and onnxruntime.

Lifecycle (TorchServe calls these):
  initialize(context)  read manifest.json, verify the model's sha256, create the ORT
                       session (CUDA on TorchServe's gpu_id when there is one, else CPU),
                       check the graph against the manifest's I/O spec, warm up.
  handle(data, context) -> list  one response per request, in order. Each request is
                       parsed on its own (a bad one gets its own 400 JSON body and never
                       fails its batch neighbours), the good ones run in ONE session.run.

A model handler overrides only:
  setup(model_dir)            optional: tokenizer or other resources from the archive
  preprocess(body)            -> (inputs: {name: array with leading item axis}, meta)
  postprocess(outputs, meta)  -> a JSON-serialisable answer for that request
  check_tensors(inputs)       limits on raw Open Inference Protocol (v2) tensors
and optionally collate()/split() when requests need padding to one batch (text).

Its support modules, shipped beside it: inputs.py (InputError and the request-reading
primitives), v2.py (the Open Inference Protocol), http_reply.py (the one place statuses and
headers are set), dtypes.py (tensor types), integrity.py (the model file's sha256).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from cores import note_worker_start, worker_threads
from http_reply import reply, reply_binary
from inputs import InputError, clip, finite_number, parse_json, request_body, request_header, unicode_text
from integrity import sha256_file
from ort_fusions import disabled_optimizers
from tensor_form import Arrays, TensorRequest, check_spec, looks_like_tensor_form, read_tensor_form, tensor_answer
from v2 import HEADER_LENGTH, BinaryAnswer, V2Request, is_v2, parsed_body, v2_refusal, v2_response, v2_tensors

# What a model handler imports from here (the reading primitives live in inputs.py).
__all__ = ["Arrays", "InputError", "ModelIntegrityError", "OrtHandler", "clip", "finite_number", "parse_json",
           "unicode_text", "worker_threads", "choose_providers", "sha256_file"]

log = logging.getLogger(__name__)



class ModelIntegrityError(RuntimeError):
    """The model file is not the one that was verified and packaged."""


MAX_EXPLAINED_ITEMS = 16
INTERNAL_ERROR = {"code": 500, "type": "InternalServerError", "message": "inference failed for this request"}


def refusal_of(exc: Exception) -> InputError | None:
    """ONNX Runtime failing on one request's tensors alone (a node that cannot run on them: an image
    smaller than a kernel, more tokens than a position table, an index beyond a vocabulary): that
    request's 422 with ORT's reason. None for anything else, which stays a 500 (memory, a broken
    model: the server's fault, not the request's)."""
    text = str(exc)
    if "memory" in text.lower() or "alloc" in text.lower():
        return None
    if isinstance(exc, ort.capi.onnxruntime_pybind11_state.InvalidArgument) or \
            "Non-zero status code returned while running" in text:
        reason = " ".join(text.split())[:300]
        return InputError(f"the model cannot run on this input: {reason}", status=422)
    return None


# TorchServe's frontend reads every answer of a batch with max_response_size as its limit
# (ModelResponseDecoder checks each length field, not the batch's sum) and drops the worker on a
# longer one, failing the whole batch. So the cap is per answer: an answer's neighbours never
# matter. The default fits config.properties' max_response_size (8 MiB) with room for headers.
DEFAULT_MAX_ANSWER_BYTES = 8 * 1024 * 1024 - 16 * 1024


def wants_explanation(context: Any, idx: int) -> bool:
    """TorchServe marks requests to /explanations/<model> with the header explain: True."""
    getter = getattr(context, "get_request_header", None)
    try:
        return getter is not None and str(getter(idx, "explain")) == "True"
    except Exception:  # noqa: BLE001 - a context without headers is a prediction
        return False


def choose_providers(gpu_id: Any, use_tensorrt: bool = False) -> list[Any]:
    """CUDA on TorchServe's gpu_id when TorchServe assigned one and this ORT build has CUDA; CPU always last."""
    available = ort.get_available_providers()
    providers: list[Any] = []
    if gpu_id is not None and "CUDAExecutionProvider" in available:
        device = {"device_id": int(gpu_id)}
        if use_tensorrt and "TensorrtExecutionProvider" in available:
            providers.append(("TensorrtExecutionProvider", device))
        providers.append(("CUDAExecutionProvider", device))
    providers.append("CPUExecutionProvider")
    return providers


def open_openvino(model_path: Path, threads: int, engine: dict[str, Any], shared: bool) -> Any:
    """The archive's ONNX file on OpenVINO's CPU plugin, behind ORT's session surface (`shared`:
    other workers share the machine, so no thread pinning)."""
    try:
        from openvino_session import OpenVinoSession
        return OpenVinoSession(model_path, threads, str(engine.get("precision", "default")), pinning=not shared)
    except ImportError as exc:
        raise RuntimeError(f"this archive runs on OpenVINO, which this server's Python lacks ({exc}): "
                           "pip install 'maas[openvino]'") from None


class OrtHandler:
    """Template-method TorchServe handler around one ONNX Runtime session."""

    # Beside its own request form, a handler reads the tensor form {"inputs": {...}} (tensor_form.py)
    # and answers it generically; the generic handler, whose own form it is, turns this off.
    reads_tensor_form = True

    def __init__(self) -> None:
        self.session: ort.InferenceSession | None = None
        self.manifest: dict[str, Any] = {}
        self.settings: dict[str, Any] = {}
        self.provider = "none"
        self.use_io_binding = False
        self.output_names: list[str] = []
        self.model_version = ""
        self.initialized = False
        self._v2_ids: dict[int, Any] = {}  # the current batch's v2 requests (index -> id): see _reply

    # ---- lifecycle -----------------------------------------------------------------
    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = Path(props["model_dir"])
        self.manifest = json.loads((model_dir / "manifest.json").read_text())
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.settings = dict(yaml_config.get("handler") or {})
        self.model_version = str((getattr(context, "manifest", None) or {}).get("model", {}).get("modelVersion", ""))

        self.restarted = note_worker_start(model_dir)
        model_path = model_dir / self.manifest["model_file"]
        # The model, any external weights beside it (models over 2 GB) and every file the handler reads
        # (tokenizer, labels: `setup` reads them, so after this) are the verified ones.
        checked = [(self.manifest["model_file"], self.manifest["sha256"])]
        checked += [(e["file"], e["sha256"]) for e in self.manifest.get("external_data", [])]
        checked += list(self.manifest.get("assets", {}).items())
        for file, expected in checked:
            actual = sha256_file(model_dir / file) if (model_dir / file).is_file() else "missing"
            if actual != expected:
                log.error("INTEGRITY: %s sha256 %s does not match manifest %s; refusing to load", file, actual, expected)
                raise ModelIntegrityError(f"{file}: sha256 {actual} does not match the manifest's {expected}")
        self.setup(model_dir)

        threads = worker_threads(self.settings.get("intra_op_threads", 0), yaml_config.get("maxWorkers", 1))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 1 and not self.settings.get("allow_spinning", False):
            # Idle intra-op threads spin by default; on a box whose cores TorchServe's frontend
            # (and here the load generator) share, spinning steals the cores the pool waits for.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        engine = self.manifest.get("engine") or {}
        if engine.get("name") == "openvino":  # an OpenVINO variant (export/variants.py): same file, same contract
            self.session = open_openvino(model_path, threads, engine, int(yaml_config.get("maxWorkers", 1)) > 1)
        else:
            providers = choose_providers(props.get("gpu_id"), bool(self.settings.get("use_tensorrt", False)))
            self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers,
                                                disabled_optimizers=disabled_optimizers(providers))
        self.provider = self.session.get_providers()[0]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if props.get("gpu_id") is not None and self.provider == "CPUExecutionProvider":
            message = (f"gpu_id {props.get('gpu_id')} was assigned but ONNX Runtime fell back to CPU "
                       f"(available: {ort.get_available_providers()}; CUDA 13 / cuDNN 9 libraries missing?)")
            if self.settings.get("require_cuda", False):
                raise RuntimeError(message + "; require_cuda is set, so this worker refuses to serve")
            log.warning(message)
        # IO binding: on CUDA, inputs are copied to the device once and outputs fetched once per
        # batch, without ORT's per-run staging. "auto" = on CUDA only.
        binding = self.settings.get("io_binding", "auto")
        self.use_io_binding = self.provider == "CUDAExecutionProvider" if binding == "auto" else bool(binding)
        self._check_io()
        self._warm_up(model_dir)
        self._emit_start_metrics(context)
        self.initialized = True
        log.info("%s %s ready: provider %s, intra-op threads %d, sha256 %s",
                 self.manifest["name"], self.model_version, self.provider, threads, self.manifest["sha256"][:12])

    def _check_io(self) -> None:
        """The session's tensors must be the manifest's: a wrong file never serves."""
        got_in = [i.name for i in self.session.get_inputs()]
        got_out = [o.name for o in self.session.get_outputs()]
        want_in = [t["name"] for t in self.manifest["inputs"]]
        want_out = [t["name"] for t in self.manifest["outputs"]]
        if got_in != want_in or got_out != want_out:
            raise ModelIntegrityError(f"graph I/O {got_in} -> {got_out} differs from manifest {want_in} -> {want_out}")

    def _warm_up(self, model_dir: Path) -> None:
        """One run before the worker reports ready, so the first request is not slow: on the
        archive's first sample when it carries samples (sizes the model is known to accept), else
        on zeros shaped by the spec (dynamic axes = 1). A warm-up the model refuses (a convolution
        longer than 1 sample, say) costs only the warm-up: logged, and the worker serves."""
        feeds = self._warm_up_feeds(model_dir)
        try:
            self.session.run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - a shape the model refuses must not cost the worker
            shapes = {name: list(a.shape) for name, a in feeds.items()}
            log.warning("warm-up skipped: the model refused %s (%s); requests of sizes it accepts are served",
                        shapes, str(exc).splitlines()[0][:300])

    def _warm_up_feeds(self, model_dir: Path) -> Arrays:
        inputs, batched = self.manifest["inputs"], bool(self.manifest.get("batch_axis"))
        samples = self.manifest.get("samples")
        if samples and (model_dir / samples).is_file():
            with np.load(model_dir / samples, allow_pickle=False) as data:
                if all(t["name"] in data.files for t in inputs):
                    return {t["name"]: np.asarray(data[t["name"]][:1] if batched else data[t["name"]], dtype=t["dtype"])
                            for t in inputs}
        return {t["name"]: np.zeros([d if isinstance(d, int) else 1 for d in t["shape"]], dtype=t["dtype"])
                for t in inputs}

    # ---- per-model hooks ------------------------------------------------------------
    def setup(self, model_dir: Path) -> None:
        """Load model-specific resources (a tokenizer, ...) once the manifest is read."""

    def preprocess(self, body: Any) -> tuple[Arrays, Any]:
        raise NotImplementedError

    def postprocess(self, outputs: Arrays, meta: Any) -> Any:
        raise NotImplementedError

    def check_tensors(self, inputs: Arrays) -> None:
        """Model-specific limits on raw v2 tensors (e.g. token ids within the vocabulary)."""

    def v2_response(self, outputs: Arrays, request: V2Request) -> dict[str, Any] | BinaryAnswer:
        """The Open Inference Protocol answer (handlers/v2.py)."""
        return v2_response(outputs, request, self.manifest["name"], self.model_version)

    def collate(self, items: list[Arrays]) -> Arrays:
        """Join requests along axis 0 (override to pad, e.g. text to the longest sequence)."""
        return {name: np.concatenate([it[name] for it in items], axis=0) for name in items[0]}

    @staticmethod
    def split(outputs: Arrays, counts: list[int]) -> list[Arrays]:
        bounds = np.cumsum([0] + counts)
        return [{k: v[bounds[i]:bounds[i + 1]] for k, v in outputs.items()} for i in range(len(counts))]

    # ---- the batch loop ---------------------------------------------------------------
    def max_items(self) -> int:
        return int(self.settings.get("max_items_per_request", 256))

    def run(self, items: list[Arrays]) -> list[Arrays]:
        """ONE session.run for all items; returns each item's outputs."""
        feeds = self.collate(items)
        outputs = dict(zip(self.output_names, self._session_run(feeds)))
        counts = [len(next(iter(it.values()))) for it in items]
        return self.split(outputs, counts)

    def _session_run(self, feeds: Arrays) -> list[np.ndarray]:
        rows = int(self.settings.get("fixed_batch_rows") or 0)
        if rows > 0 and self.manifest.get("batch_axis"):
            return self._fixed_shape_run(feeds, rows)
        return self._engine_run(feeds)

    def _fixed_shape_run(self, feeds: Arrays, rows: int) -> list[np.ndarray]:
        """Every engine run at exactly `rows` rows (the batch cut into chunks, the last padded with
        copies of its first row): ONNX Runtime then computes a row with the same kernels and shapes
        whatever it shares the batch with (parity.batch_variance measures what is left)."""
        total = len(next(iter(feeds.values())))
        parts = []
        for start in range(0, total, rows):
            chunk = {name: a[start:start + rows] for name, a in feeds.items()}
            real = len(next(iter(chunk.values())))
            if real < rows:
                chunk = {name: np.concatenate([a, np.repeat(a[:1], rows - real, axis=0)]) for name, a in chunk.items()}
            parts.append([out[:real] for out in self._engine_run(chunk)])
        return [np.concatenate([part[i] for part in parts]) for i in range(len(parts[0]))]

    def _engine_run(self, feeds: Arrays) -> list[np.ndarray]:
        if not self.use_io_binding:
            return self.session.run(self.output_names, feeds)
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.asarray(array, order="C"))  # keeps a scalar 0-d
        for name in self.output_names:
            binding.bind_output(name)  # allocated by the provider, on its device
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """One response per request; a bad request gets its own 4xx, neighbours are served.

        Nothing a request contains may raise out of here: TorchServe answers an exception with
        a 503 for the whole batch. Unforeseen failures become that request's own 500 (logged).
        """
        started = time.perf_counter()
        responses: list[Any] = [None] * len(data)
        good: list[tuple[int, Arrays, Any]] = []
        self._v2_ids = {}
        for idx, request in enumerate(data):
            try:
                body = request_body(request)
                if wants_explanation(context, idx):
                    responses[idx] = self._explain_one(context, idx, body)
                    continue
                inputs, meta = self._read(context, idx, body)
                good.append((idx, inputs, meta))
            except InputError as err:
                responses[idx] = self._refuse(context, idx, err)
            except Exception:
                log.exception("request %d: unexpected failure while reading it", idx)
                responses[idx] = self._reply(context, idx, INTERNAL_ERROR, 500)
        parsed = time.perf_counter()

        items = 0
        if good:
            try:
                results = self.run([inputs for _, inputs, _ in good])
            except Exception:
                log.exception("batch of %d failed in ONNX Runtime; retrying each request alone", len(good))
                results = [self._run_alone(inputs) for _, inputs, _ in good]
            inferred = time.perf_counter()
            for (idx, inputs, meta), outputs in zip(good, results):
                items += len(next(iter(inputs.values())))
                responses[idx] = self._answer(context, idx, outputs, meta)
        else:
            inferred = parsed
        self._cap_response_sizes(context, responses)
        done = time.perf_counter()
        self._emit_metrics(context, (parsed - started) * 1000, (inferred - parsed) * 1000, (done - inferred) * 1000,
                           len(data), items, len(data) - len(good))
        return responses

    def _read(self, context: Any, idx: int, body: Any) -> tuple[Arrays, Any]:
        """One request's tensors and what answering it needs: an Open Inference Protocol request, the
        tensor form every maas handler reads (tensor_form.py), or the handler's own form."""
        body = parsed_body(body, request_header(context, idx, HEADER_LENGTH))  # JSON parsed here, once
        if is_v2(body):
            self._v2_ids[idx] = body.get("id")
            inputs, meta = v2_tensors(body, self.manifest["inputs"], self.manifest["outputs"], self.max_items(),
                                      bool(self.manifest.get("batch_axis")))
            self.check_tensors(inputs)
            return inputs, meta
        if self.reads_tensor_form and looks_like_tensor_form(body):
            inputs, single = read_tensor_form(body, self.manifest)
            check_spec(inputs, self.manifest, self.max_items())
            self.check_tensors(inputs)
            return inputs, TensorRequest(single)
        return self.preprocess(body)

    def _answer(self, context: Any, idx: int, outputs: Arrays | InputError | None, meta: Any) -> str:
        """`outputs`: the request's, or the model's refusal of its tensors (refusal_of), or None (a 500)."""
        if outputs is None:
            return self._reply(context, idx, INTERNAL_ERROR, 500)
        if isinstance(outputs, InputError):
            return self._refuse(context, idx, outputs)
        try:
            if isinstance(meta, V2Request):
                answer = self.v2_response(outputs, meta)
            elif isinstance(meta, TensorRequest):
                answer = tensor_answer(outputs, self.manifest, meta.single)
            else:
                answer = self.postprocess(outputs, meta)
            return self._reply(context, idx, answer, 200)
        except InputError as err:  # e.g. an answer that cannot be expressed for this request
            return self._reply(context, idx, err.to_dict(), err.status)
        except Exception:
            log.exception("request %d: postprocessing failed", idx)
            return self._reply(context, idx, INTERNAL_ERROR, 500)

    def _cap_response_sizes(self, context: Any, responses: list[Any]) -> None:
        """An answer the frontend would refuse (over max_response_size) becomes that request's 413."""
        cap = int(self.settings.get("max_answer_bytes", DEFAULT_MAX_ANSWER_BYTES))
        for idx, response in enumerate(responses):
            if isinstance(response, (str, bytes)) and len(response) > cap:
                body = InputError(f"the answer is {len(response)} bytes, more than the server sends for one request "
                                  f"({cap}, under config.properties' max_response_size); ask for binary tensors "
                                  f"(v2: parameters.binary_data_output), fewer outputs, or fewer items per request",
                                  status=413).to_dict()
                responses[idx] = self._reply(context, idx, body, 413)

    def _emit_start_metrics(self, context: Any) -> None:
        """MaasWorkerRestarts: +1 when this worker replaces one that died (0 on a first start, so
        the series exists before the first restart and a Prometheus increase() can fire on it)."""
        if self.restarted:
            log.warning("%s: this worker replaces one that died (see ts_log.log)", self.manifest.get("name"))
        self._metric(context, lambda m, dims: m.add_counter("MaasWorkerRestarts", int(self.restarted), None, dims()))

    def _metric(self, context: Any, emit: Any) -> None:
        metrics = getattr(context, "metrics", None)
        if metrics is None:  # outside TorchServe (unit tests)
            return

        def dims() -> list:  # TorchServe appends to the list it is given: a fresh one per call
            from ts.metrics.dimension import Dimension

            return [Dimension("ModelName", self.manifest.get("name", "")), Dimension("Level", "Model"),
                    Dimension("Provider", self.provider)]

        try:
            emit(metrics, dims)
        except Exception:
            log.warning("could not emit handler metrics", exc_info=True)

    def _emit_metrics(self, context: Any, pre_ms: float, inf_ms: float, post_ms: float,
                      requests: int, items: int, rejected: int) -> None:
        """Per-batch handler metrics (declared in metrics.yaml; exported by TorchServe's metrics API)."""
        def emit(m: Any, dims: Any) -> None:
            from ts.metrics.metric_type_enum import MetricTypes

            m.add_time("MaasPreprocessMs", pre_ms, None, "ms", dims())
            m.add_time("MaasInferenceMs", inf_ms, None, "ms", dims())
            m.add_time("MaasPostprocessMs", post_ms, None, "ms", dims())
            m.add_metric("MaasBatchRequests", requests, "count", None, dims(), MetricTypes.GAUGE)
            m.add_metric("MaasBatchItems", items, "count", None, dims(), MetricTypes.GAUGE)
            m.add_counter("MaasRequests", requests, None, dims())
            if rejected:
                m.add_counter("MaasRejectedRequests", rejected, None, dims())

        self._metric(context, emit)

    # ---- explanations (TorchServe's /explanations/<model>) -----------------------------
    def explain(self, inputs: Arrays, meta: Any) -> Any:
        """Subclasses answer with attributions computed by forward passes of the ONNX model."""
        raise InputError(f"explanations are not available for {self.manifest.get('name')}", status=404)

    def _explain_one(self, context: Any, idx: int, body: Any) -> str:
        """One explanation request, on its own (it costs tens of forward passes, not one)."""
        inputs, meta = self.preprocess(body)
        if len(next(iter(inputs.values()))) > MAX_EXPLAINED_ITEMS:
            raise InputError(f"explain at most {MAX_EXPLAINED_ITEMS} items per request", status=413)
        try:
            answer = self.explain(inputs, meta)
        except InputError:
            raise
        except Exception:
            log.exception("explanation failed")
            body = {"code": 500, "type": "InternalServerError", "message": "explanation failed for this request"}
            return self._reply(context, idx, body, 500)
        return self._reply(context, idx, answer, 200)

    def _run_alone(self, inputs: Arrays) -> Arrays | InputError | None:
        try:
            return self.run([inputs])[0]
        except Exception as exc:
            log.exception("request failed in ONNX Runtime")
            return refusal_of(exc)

    def _refuse(self, context: Any, idx: int, err: InputError) -> str | bytes:
        """A request's own 4xx: the error's fields (and, for a v2 request, `error`, KServe's REST field)."""
        error = err.to_dict() if idx not in self._v2_ids else {"error": err.message, **err.to_dict()}
        return self._reply(context, idx, error, err.status)

    def _reply(self, context: Any, idx: int, body: Any, status: int) -> str | bytes:
        """Every response goes through http_reply: fixed ASCII phrases, checked header values.
        A refusal of a v2 request gets the envelope gRPC's Open Inference frontend needs (v2.py)."""
        if status != 200 and idx in self._v2_ids and isinstance(body, dict):
            body = v2_refusal(body, status, self._v2_ids[idx], self.manifest["name"], self.model_version)
        headers = {"X-Execution-Provider": self.provider}
        if self.model_version:
            headers["X-Model-Version"] = self.model_version
        if isinstance(body, BinaryAnswer):
            return reply_binary(context, idx, body.header, body.data, headers)
        return reply(context, idx, body, status, headers, fast_json=bool(self.settings.get("fast_json", True)))
