"""An adapter so EleutherAI's `lm-evaluation-harness` (`pip install lm-eval`, optional) can evaluate
any checkpoint `load_model` reads (Meta / HF / llamaforge run folder), scored by the same code as
`llamaforge eval` (`continuation_logprobs`, `generate`).

    import lm_eval
    import llamaforge.eval.lm_eval_adapter  # registers the model name "llamaforge"
    lm_eval.simple_evaluate(model="llamaforge", model_args="pretrained=runs/demo/03-pretrain", tasks=["hellaswag"])

or pass an instance: `simple_evaluate(model=LlamaforgeLM("runs/demo/03-pretrain"), tasks=[...])`.
"""

from __future__ import annotations

from pathlib import Path

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError("the lm-evaluation-harness adapter needs lm-eval: pip install 'lm-eval>=0.4'") from e

from ..generate import SamplingParams, generate
from .harness import continuation_logprobs, split_context_continuation


@register_model("llamaforge")
class LlamaforgeLM(LM):
    """`pretrained`: a checkpoint path; `tokenizer`: its tokenizer.model (found next to it when unset)."""

    def __init__(self, pretrained: str, tokenizer: str | None = None, device: str = "cpu", batch_size: int | str = 16,
                 max_gen_toks: int = 256, **_ignored) -> None:
        super().__init__()
        from ..checkpoint import load_model
        from ..cli import find_tokenizer
        from ..tokenizer import Tokenizer

        self.model = load_model(pretrained, device=device).eval()
        self.tok = Tokenizer(find_tokenizer(Path(pretrained), tokenizer))
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16  # "auto" -> 16
        self.max_gen_toks = int(max_gen_toks)

    @property
    def tokenizer_name(self) -> str:
        return "llamaforge-sentencepiece"

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [split_context_continuation(self.tok, context, continuation) for context, continuation in
                 (request.args for request in requests)]
        return continuation_logprobs(self.model, pairs, self.batch_size)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood after BOS, in windows of the model's context; every token is
        predicted once, each window with as much context as fits."""
        window = self.model.args.max_seq_len
        out = []
        for request in requests:
            (text,) = request.args
            tokens = self.tok.encode(text, bos=True, eos=False)
            pairs = [(tokens[:start], tokens[start : start + window]) for start in range(1, len(tokens), window)]
            out.append(sum(logprob for logprob, _ in continuation_logprobs(self.model, pairs, self.batch_size)))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or the request's temperature) until one of `until` or `max_gen_toks` tokens."""
        out = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            params = SamplingParams(max_new_tokens=int(kwargs.get("max_gen_toks", self.max_gen_toks)),
                                    temperature=float(kwargs.get("temperature", 0.0) or 0.0), stop_strings=until)
            prompt = self.tok.encode(context, bos=True, eos=False)[-(self.model.args.max_seq_len - 1) :]
            (completion,) = generate(self.model, [prompt], params, tokenizer=self.tok)
            text = completion.text or ""
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out
