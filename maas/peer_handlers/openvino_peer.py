"""The "go faster without maas" peer: the same stock BaseHandler shape as eager_peer.py, but the
model runs on OpenVINO, the CPU engine an engineer picks to speed PyTorch up on x86. The
model (AutoModel + mean pooling + L2 normalisation) was converted at build time with
`openvino.convert_model` from PyTorch and saved as IR (model.xml/.bin), as OpenVINO's docs
advise; here it is compiled for the CPU with `INFERENCE_NUM_THREADS = cores // maxWorkers`
and the LATENCY hint (one batch at a time per worker, as TorchServe sends them); thread
pinning is off when several workers share the machine.
"""
import json
import os

import numpy as np
import openvino as ov
from transformers import AutoTokenizer
from ts.torch_handler.base_handler import BaseHandler

MAX_LENGTH = 256


class OpenVinoPeerHandler(BaseHandler):
    def initialize(self, context):
        model_dir = context.system_properties.get("model_dir")
        workers = int((context.model_yaml_config or {}).get("maxWorkers", 1))
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        if workers > 1:
            # OpenVINO pins its threads to cores by default; every worker process would pin to the
            # same first cores and share them (measured: 2 workers ran at 0.66x of 1). Its docs:
            # turn pinning off when several processes share the machine.
            config["ENABLE_CPU_PINNING"] = False
        self.compiled = ov.Core().compile_model(os.path.join(model_dir, "model.xml"), "CPU", config)
        self.initialized = True

    def preprocess(self, data):
        raw = [row.get("body") or row.get("data") for row in data]
        texts = [(json.loads(b) if isinstance(b, (bytes, bytearray, str)) else b)["text"] for b in raw]
        return self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")

    def inference(self, encoded, *args, **kwargs):
        inputs = {"input_ids": encoded["input_ids"].astype(np.int64),
                  "attention_mask": encoded["attention_mask"].astype(np.int64)}
        return self.compiled(inputs)[0]

    def postprocess(self, embeddings):
        return [{"embedding": row} for row in embeddings.tolist()]
