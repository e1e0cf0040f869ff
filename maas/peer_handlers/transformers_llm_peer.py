"""The language-model peer: `transformers` `generate` in a stock TorchServe handler, streaming, as
TorchServe's own examples serve a causal LM (examples/large_models/..., its streaming docs): a
BaseHandler subclass loads AutoModelForCausalLM and AutoTokenizer from the archive, eval mode;
each request runs `generate` under torch.inference_mode() with a TextIteratorStreamer in a thread,
and every piece of text goes out with `send_intermediate_predict_response`. One request at a time
per worker (batchSize 1): `generate` decodes one fixed batch, it cannot take requests in flight.

The answer is written as the OpenAI streaming events maas's load test reads (text deltas, then a
finish reason with usage and `data: [DONE]`), so both servers are loaded by the same Locust users.
Threads: torch.set_num_threads(cores // maxWorkers), as TorchServe's CPU performance guide advises.
"""
import json
import os
import threading

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer
from ts.handler_utils.utils import send_intermediate_predict_response
from ts.torch_handler.base_handler import BaseHandler


def event(payload):
    return "data: " + json.dumps(payload) + "\n\n"


class TransformersLlmPeer(BaseHandler):
    def initialize(self, context):
        model_dir = context.system_properties.get("model_dir")
        workers = int((context.model_yaml_config or {}).get("maxWorkers", 1))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
        self.initialized = True

    def handle(self, data, context):
        body = data[0].get("body") or data[0].get("data")
        if isinstance(body, (bytes, bytearray, str)):
            body = json.loads(body)
        if "messages" in body:
            text = self.tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        else:
            ids = self.tokenizer(body["prompt"], return_tensors="pt").input_ids
        temperature = float(body.get("temperature", 1.0))
        options = {"max_new_tokens": int(body.get("max_tokens") or 16), "do_sample": temperature > 0}
        if temperature > 0:
            options.update(temperature=temperature, top_p=float(body.get("top_p", 1.0)), top_k=int(body.get("top_k", 0)))
            if body.get("seed") is not None:
                torch.manual_seed(int(body["seed"]))
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        out = {}

        def generate():
            with torch.inference_mode():
                out["ids"] = self.model.generate(ids, attention_mask=torch.ones_like(ids), streamer=streamer, **options)

        thread = threading.Thread(target=generate)
        thread.start()
        context.set_response_content_type(0, "text/event-stream")
        first = True
        for piece in streamer:
            if piece:
                delta = {"role": "assistant", "content": piece} if first else {"content": piece}
                first = False
                send_intermediate_predict_response([event({"choices": [{"index": 0, "delta": delta}]})],
                                                   context.request_ids, "Intermediate Prediction success", 200, context)
        thread.join()
        tokens = int(out["ids"].shape[1] - ids.shape[1])
        stopped = tokens < options["max_new_tokens"]
        last = {"index": 0, "delta": {}, "finish_reason": "stop" if stopped else "length"}
        if body.get("return_token_ids"):  # for the bench's parity check, as maas (and vLLM) answer it
            last.update(prompt_token_ids=ids[0].tolist(), token_ids=out["ids"][0, ids.shape[1]:].tolist())
        return [event({"choices": [last],
                       "usage": {"prompt_tokens": int(ids.shape[1]), "completion_tokens": tokens,
                                 "total_tokens": int(out["ids"].shape[1])}}) + "data: [DONE]\n\n"]
