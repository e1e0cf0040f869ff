"""A client for TorchServe's gRPC inference API (`InferenceAPIsService`), with the same keys,
TLS and answers as the HTTP client.

- Keys: TorchServe 0.12 checks the inference key on gRPC as on HTTP (metadata
  `authorization: Bearer <key>`; a missing or wrong key is PERMISSION_DENIED, Ping included).
  The key comes from the HTTP client, so it is read fresh and renewed the same way.
- TLS: with `enable_grpc_ssl=true` TorchServe serves gRPC with `certificate_file` and
  `private_key_file`; the client trusts $MAAS_CA_BUNDLE, else that certificate.
- Errors: TorchServe 0.12's gRPC frontend drops the status a handler sets (GRPCJob.response
  ignores it), so a 400 from a maas handler arrives as an OK reply whose bytes are the HTTP
  error body. `predict` turns such a body back into a GrpcCallError with the matching gRPC
  code and the body's message; errors of the server itself (unknown model, no worker) come as
  real gRPC statuses.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from maas.client import ServeError, TokenRefused, says_token_refused
from maas.properties import resolve_paths

# The gRPC code for each HTTP status a handler answers with (the mapping gRPC's own docs give
# for HTTP statuses, as grpc-gateway uses it).
HTTP_TO_GRPC = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ALREADY_EXISTS", 413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED",
                499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
ERROR_START = re.compile(rb'\s*\{\s*"(code|error)"\s*:')  # handlers' error bodies begin so (orjson or json.dumps)
# The generation handler answers in the OpenAI API's error shape, which carries no status: its type says it.
OPENAI_STATUS = {"invalid_request_error": 400, "not_found_error": 404, "rate_limit_error": 429, "server_error": 500}
MAX_MESSAGE = 64 * 1024 * 1024  # the server's max_request_size / max_response_size are the caps that count


class GrpcCallError(ServeError):
    """A refused gRPC call: `code` is the gRPC status name, `message` what the server said;
    `body` is a handler's error body when the refusal came from one."""

    def __init__(self, code: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"gRPC {code}: {message}")
        self.code, self.message, self.body = code, message, body


def handler_error(answer: bytes) -> dict[str, Any] | None:
    """The error body of a maas handler ({"code": 4xx/5xx, "type", "message", ...}), if `answer` is one."""
    if not ERROR_START.match(answer):  # cheap: answers are not parsed twice
        return None
    try:
        body = json.loads(answer)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "message" in error and error.get("type") in OPENAI_STATUS:
        status = 404 if error.get("code") in ("model_not_found", "unknown_url") else OPENAI_STATUS[error["type"]]
        return {**error, "code": status, "openai_code": error.get("code")}
    code = body.get("code") if isinstance(body, dict) else None
    return body if isinstance(code, int) and code >= 400 and "message" in body else None


def grpc_target(props: dict[str, str]) -> str:
    return f"{props.get('grpc_inference_address', '127.0.0.1')}:{props.get('grpc_inference_port', '7070')}"


def tls_ca_file(props: dict[str, str], config_dir: Path) -> Path | None:
    """The CA to trust when the server's gRPC uses TLS (None: plain gRPC)."""
    if props.get("enable_grpc_ssl", "false").strip().lower() != "true":
        return None
    bundle = os.environ.get("MAAS_CA_BUNDLE") or resolve_paths(props, config_dir).get("certificate_file")
    if not bundle:
        raise ServeError("enable_grpc_ssl=true needs certificate_file (or MAAS_CA_BUNDLE for the client)")
    return Path(bundle)


class GrpcInference:
    def __init__(self, target: str, key: Callable[[], str | None], renew: Callable[[], None] | None = None,
                 root_certificates: bytes | None = None, timeout: float = 60.0) -> None:
        import grpc

        from maas.grpc_stubs import stubs

        self.target, self.key, self.renew, self.timeout = target, key, renew, timeout
        self._pb = stubs()
        options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
        if root_certificates is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options=options)
        self.stub = self._pb.inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)
        self.stub_v2 = self._pb.open_inference_grpc_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    @classmethod
    def for_server(cls, server: Any, timeout: float = 60.0) -> "GrpcInference":
        """A client of `server` (maas.server.TorchServe) using its config, keys and TLS."""
        client = server.client
        renew = (lambda: client.renew_key("inference")) if client.key_file else None
        ca = tls_ca_file(server.props, server.layout.config.resolve().parent)
        return cls(grpc_target(server.props), lambda: client.fresh_key("inference"), renew,
                   ca.read_bytes() if ca else None, timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "GrpcInference":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        import grpc

        for attempt in (1, 2):
            key = self.key()
            metadata = [("authorization", f"Bearer {key}")] if key else []
            try:
                return method(request, metadata=metadata, timeout=self.timeout)
            except grpc.RpcError as exc:
                code, details = exc.code(), (exc.details() or "").split("\n")[0]
                if code == grpc.StatusCode.PERMISSION_DENIED and says_token_refused(details):
                    if attempt == 1 and self.renew is not None:
                        self.renew()  # expired between reading and sending: renew once and retry
                        continue
                    raise TokenRefused(f"TorchServe refused the inference key on gRPC {self.target}: {details}") from None
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise GrpcCallError(code.name, f"TorchServe's gRPC API is not answering at {self.target}: {details}") from None
                raise GrpcCallError(code.name, details) from None
        raise AssertionError("unreachable")

    def ping(self) -> str:
        from google.protobuf import empty_pb2

        return json.loads(self._call(self.stub.Ping, empty_pb2.Empty()).health)["status"]

    def predict_raw(self, model: str, body: bytes, version: str | None = None) -> bytes:
        """The reply's bytes as TorchServe sent them (a handler's error body included)."""
        request = self._pb.inference_pb2.PredictionsRequest(model_name=model, model_version=version or "",
                                                            input={"data": body})
        try:
            return self._call(self.stub.Predictions, request).prediction
        except GrpcCallError as exc:
            if exc.code == "CANCELLED" and "RST_STREAM" in exc.message:
                # TorchServe caps gRPC messages at max_request_size by resetting the stream.
                raise GrpcCallError(exc.code, f"the server reset the stream after a {len(body):,}-byte request: "
                                              "over its max_request_size?") from None
            raise

    def stream_predict(self, model: str, body: bytes, version: str | None = None) -> Iterator[bytes]:
        """TorchServe's StreamPredictions: each answer a handler streams (a generation's server-sent
        events), as it comes; a handler's refusal is raised as a GrpcCallError."""
        import grpc

        request = self._pb.inference_pb2.PredictionsRequest(model_name=model, model_version=version or "",
                                                            input={"data": body})
        replies = self._call(self.stub.StreamPredictions, request)
        try:
            for reply in replies:
                refusal = refused(reply.prediction)
                if refusal is not None:
                    raise refusal
                yield reply.prediction
        except grpc.RpcError as exc:
            raise GrpcCallError(exc.code().name, (exc.details() or "").split("\n")[0]) from None

    def v2_infer(self, model: str, inputs: dict[str, Any], version: str | None = None,
                 request_id: str = "") -> dict[str, Any]:
        """Open Inference Protocol (KServe v2) over gRPC: numpy arrays in, numpy arrays out.

        TorchServe 0.12 serves it as `org.pytorch.serve.grpc.openinference.GRPCInferenceService`,
        not the `inference.GRPCInferenceService` that tritonclient.grpc calls (UNIMPLEMENTED there),
        so these are the stubs of TorchServe's own open_inference_grpc.proto. A refusal comes back
        as the outputs `error` and `error_code` (handlers/v2.py) and is raised as a GrpcCallError."""
        import numpy as np

        from maas.handlers.dtypes import DTYPES

        pb = self._pb.open_inference_grpc_pb2
        request = pb.ModelInferRequest(model_name=model, model_version=version or "", id=request_id)
        for name, value in inputs.items():
            array = np.asarray(value)
            tensor = request.inputs.add(name=name, datatype=DTYPES[str(array.dtype)].v2, shape=list(array.shape))
            getattr(tensor.contents, v2_contents_field(tensor.datatype)).extend(array.ravel().tolist())
        reply = self._call(self.stub_v2.ModelInfer, request)
        by_v2 = {d.v2: np.dtype(name) for name, d in DTYPES.items()}
        outputs = {}
        for out in reply.outputs:
            values = list(getattr(out.contents, v2_contents_field(out.datatype)))
            if out.datatype == "BYTES":
                outputs[out.name] = [json.loads(v) for v in values]  # the frontend sends JSON text
            else:
                outputs[out.name] = np.asarray(values, dtype=by_v2[out.datatype]).reshape(list(out.shape))
        if set(outputs) == {"error", "error_code"}:
            status = int(outputs["error_code"].ravel()[0])
            raise GrpcCallError(HTTP_TO_GRPC.get(status, "UNKNOWN"), str(outputs["error"][0]))
        return outputs

    def predict(self, model: str, body: bytes, version: str | None = None) -> bytes:
        """The answer's bytes; a handler's refusal raises GrpcCallError, as a 4xx does over HTTP."""
        answer = self.predict_raw(model, body, version)
        refusal = refused(answer)
        if refusal is not None:
            raise refusal
        return answer


def v2_contents_field(datatype: str) -> str:
    """The InferTensorContents field of a v2 datatype (the repeated field the values go in)."""
    return {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents", "UINT64": "uint64_contents",
            "BOOL": "bool_contents", "BYTES": "bytes_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents"}[datatype]


def refused(answer: bytes) -> GrpcCallError | None:
    """The GrpcCallError a reply stands for when it is a handler's error body (None: an answer)."""
    error = handler_error(answer)
    if error is None:
        return None
    return GrpcCallError(HTTP_TO_GRPC.get(error["code"], "UNKNOWN"), str(error["message"]), error)
