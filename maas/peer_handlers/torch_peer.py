"""The peer: what a TorchServe user would write without maas. TorchServe's stock BaseHandler
loads a TorchScript file (torch.jit.load) and runs it eagerly under torch.inference_mode();
only request parsing and answer shaping are added, in the usual few lines.

One file serves both benchmark models (the archive's manifest.json says which). Threads are
set like the maas handler's (cores // maxWorkers), so the comparison is engine against engine.
"""
import json
import os

import torch
from ts.torch_handler.base_handler import BaseHandler


class TorchPeerHandler(BaseHandler):
    def initialize(self, context):
        super().initialize(context)
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, "peer.json")) as f:
            self.kind = json.load(f)["kind"]
        workers = int((context.model_yaml_config or {}).get("maxWorkers", 1))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))
        if self.kind == "minilm":
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
            self.tokenizer.enable_truncation(max_length=256)

    def preprocess(self, data):
        raw = [row.get("body") or row.get("data") for row in data]
        # TorchServe already decoded application/json bodies into dicts.
        bodies = [json.loads(b) if isinstance(b, (bytes, bytearray, str)) else b for b in raw]
        if self.kind == "digits":
            return (torch.tensor([b["pixels"] for b in bodies], dtype=torch.float32).unsqueeze(1),)
        encodings = self.tokenizer.encode_batch([b["text"] for b in bodies])
        length = max(len(e.ids) for e in encodings)
        ids = torch.zeros((len(bodies), length), dtype=torch.int64)
        mask = torch.zeros((len(bodies), length), dtype=torch.int64)
        for i, e in enumerate(encodings):
            ids[i, :len(e.ids)] = torch.tensor(e.ids)
            mask[i, :len(e.ids)] = torch.tensor(e.attention_mask)
        return ids, mask

    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            return self.model(*data)

    def postprocess(self, data):
        if self.kind == "digits":
            top = torch.topk(data, 5, dim=1)
            return [{str(int(i)): float(p) for p, i in zip(ps, ix)} for ps, ix in zip(top.values, top.indices)]
        return [{"embedding": row} for row in data.tolist()]
