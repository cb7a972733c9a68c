"""Collators: canonical examples -> tokenized tensors, with per-example seeded randomness.

Randomness (which tokens are masked, which hard negatives are drawn) comes from a generator seeded by
``(seed, epoch, record index)``, so it does not depend on batch layout, process count or resumption.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from lusifer.config import LusiferConfig
from lusifer.prompts import format_text
from lusifer.train.data import COMPLETION


def example_rng(seed: int, epoch: int, index: int) -> random.Random:
    """A generator private to one record in one epoch (string seeds hash with SHA-512: stable everywhere)."""
    return random.Random(f"lusifer:{seed}:{epoch}:{index}")


def _format(config: LusiferConfig, kind: str, text: str, instruction: str | None) -> str:
    template = config.query_template if kind == "query" else config.document_template
    return format_text(text, template, config.instruction_for(kind, instruction), config.prompt_style)


def _pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask



def _target_ids(llm_tokenizer, targets: list[str], max_length: int, add_eos: bool) -> list[list[int]]:
    """The LLM's token ids of stage-1 targets (no specials, cut at ``max_length``), EOS appended if asked."""
    target_ids = llm_tokenizer(targets, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    eos = llm_tokenizer.eos_token_id
    target_ids = [list(t) + ([eos] if add_eos and eos is not None else []) for t in target_ids]
    if any(not t for t in target_ids):
        raise ValueError("a stage-1 target tokenized to nothing; check the LLM tokenizer")
    return target_ids


@dataclass
class Stage1Collator:
    """Encoder inputs (masked for reconstruction) and LLM target token ids.

    Args:
        tokenizer: The encoder's tokenizer.
        llm_tokenizer: The LLM's tokenizer (targets).
        model_config: The model's config (prompt templates, default instructions).
        max_length: Encoder tokens per text.
        max_target_length: LLM target tokens before EOS.
        mask_ratio: Fraction of a reconstruction text's tokens replaced by the mask token.
        add_eos: Append the LLM's EOS token to targets.
        seed: Run seed.
    """

    tokenizer: object
    llm_tokenizer: object
    model_config: LusiferConfig
    max_length: int
    max_target_length: int
    mask_ratio: float
    add_eos: bool
    seed: int

    def __call__(self, rows: list[dict], keys: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        completion = [row["objective"] == COMPLETION for row in rows]
        texts = [
            _format(self.model_config, "query", row["encoder_text"], row["instruction"]) if comp else row["encoder_text"]
            for row, comp in zip(rows, completion)
        ]
        enc = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            return_special_tokens_mask=True,
            return_offsets_mapping=True,
        )
        input_ids = [list(ids) for ids in enc["input_ids"]]
        targets = []
        for i, (row, comp) in enumerate(zip(rows, completion)):
            target = row["target_text"]
            if not comp:
                # reconstruct only what the encoder saw after truncation
                ends = [end for (start, end), special in zip(enc["offset_mapping"][i], enc["special_tokens_mask"][i])
                        if not special and end > start]
                if ends:
                    target = target[: max(ends)]
                if self.mask_ratio > 0:
                    self._mask(input_ids[i], enc["special_tokens_mask"][i], example_rng(self.seed, *keys[i]))
            targets.append(target)
        target_ids = _target_ids(self.llm_tokenizer, targets, self.max_target_length, self.add_eos)
        ids, mask = _pad(input_ids, int(self.tokenizer.pad_token_id))
        tids, tmask = _pad(target_ids, 0)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "target_ids": tids,
            "target_mask": tmask,
            "completion": torch.tensor(completion, dtype=torch.bool),
        }

    def _mask(self, ids: list[int], special: list[int], rng: random.Random) -> None:
        candidates = [j for j, s in enumerate(special) if not s]
        count = round(self.mask_ratio * len(candidates))
        if count == 0 and candidates:
            count = 1
        for j in rng.sample(candidates, count):
            ids[j] = int(self.tokenizer.mask_token_id)


RECONSTRUCT_INSTRUCTION = "Please reconstruct the following text."


@dataclass
class Stage1ReferenceCollator:
    """Stage 1 as the reference code does it: clean encoder input, masking on the LLM side.

    The encoder reads every text formatted as a query: reconstruction records with the instruction
    :data:`RECONSTRUCT_INSTRUCTION`, completion records with their own instruction. The LLM's tokens of the
    target are returned twice: as labels (``target_ids``) and as LLM input (``llm_input_ids``), where each token
    is replaced by ``llm_mask_id`` with probability ``mask_probability``; ``llm_attention`` is ``target_mask``
    with each position dropped with probability ``attention_drop_probability``. The draws come from the
    record's own generator (:func:`example_rng`), so they do not depend on batch layout or resumption.

    Args:
        tokenizer: The encoder's tokenizer.
        llm_tokenizer: The LLM's tokenizer (targets).
        model_config: The model's config (prompt templates, default instructions, special tokens).
        max_length: Encoder tokens per text.
        max_target_length: LLM target tokens before EOS.
        add_eos: Append the LLM's EOS token to targets.
        seed: Run seed.
        llm_mask_id: Token id that replaces masked target tokens (the LLM's mask, else unk token).
        mask_probability: Probability that a target token is replaced by ``llm_mask_id``.
        attention_drop_probability: Probability that a target position leaves the attention mask.
    """

    tokenizer: object
    llm_tokenizer: object
    model_config: LusiferConfig
    max_length: int
    max_target_length: int
    add_eos: bool
    seed: int
    llm_mask_id: int | None
    mask_probability: float
    attention_drop_probability: float

    def __post_init__(self) -> None:
        if self.mask_probability > 0 and self.llm_mask_id is None:
            raise ValueError(
                f"llm_mask_probability={self.mask_probability} but the LLM tokenizer has neither a mask nor an unk "
                "token to mask with; set llm_mask_probability: 0 or use an LLM tokenizer with one of them"
            )

    def __call__(self, rows: list[dict], keys: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        completion = [row["objective"] == COMPLETION for row in rows]
        instructions = [row["instruction"] if comp else RECONSTRUCT_INSTRUCTION for row, comp in zip(rows, completion)]
        texts = [_format(self.model_config, "query", row["encoder_text"], instruction)
                 for row, instruction in zip(rows, instructions)]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, return_offsets_mapping=True,
                             add_special_tokens=self.model_config.add_special_tokens)
        targets = []
        for i, (row, comp) in enumerate(zip(rows, completion)):
            target = row["target_text"]
            if not comp:
                target = self._seen_part(target, instructions[i], enc["offset_mapping"][i])
            targets.append(target)
        target_ids = _target_ids(self.llm_tokenizer, targets, self.max_target_length, self.add_eos)
        llm_input_ids, kept = [], []
        for ids, key in zip(target_ids, keys, strict=True):
            rng = example_rng(self.seed, *key)
            masked = [rng.random() < self.mask_probability for _ in ids]
            dropped = [rng.random() < self.attention_drop_probability for _ in ids]
            llm_input_ids.append([self.llm_mask_id if m else t for t, m in zip(ids, masked)])
            kept.append([0 if d else 1 for d in dropped])
        ids, mask = _pad([list(x) for x in enc["input_ids"]], int(self.tokenizer.pad_token_id))
        tids, tmask = _pad(target_ids, 0)
        llm_ids, _ = _pad(llm_input_ids, 0)
        keep, _ = _pad(kept, 0)
        bos = self.llm_tokenizer.bos_token_id
        lead = [[] if bos is None else [int(bos)] for _ in rows]  # the tokens before the connector output
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "lead_ids": torch.tensor(lead, dtype=torch.long).reshape(len(rows), len(lead[0])),
            "llm_input_ids": llm_ids,
            "llm_attention": keep * tmask,
            "target_ids": tids,
            "target_mask": tmask,
            "completion": torch.tensor(completion, dtype=torch.bool),
        }

    def _seen_part(self, text: str, instruction: str, offsets: list[tuple[int, int]]) -> str:
        """The part of ``text`` the encoder read after truncation (it follows the instruction in the prompt)."""
        start = _format(self.model_config, "query", "\x00", instruction).index("\x00")
        ends = [end for begin, end in offsets if end > begin and end > start]  # tokens holding text characters
        if not ends:
            raise ValueError(
                f"max_length={self.max_length} leaves no encoder tokens for the text after the instruction "
                f"{instruction!r}; raise max_length"
            )
        return text[: min(max(ends) - start, len(text))]


@dataclass
class Stage2Collator:
    """Tokenized queries and documents (positives first, then every drawn hard negative).

    With ``teacher_prefix`` set (stage-2 distillation), also the teacher's inputs: every text of the batch
    (queries, positives, hard negatives, then the ``extra`` distillation texts) raw, without the LUSIFER
    template, prefixed, tokenized as the encoder alone reads it; and the ``extra`` texts as the model reads
    them (query template, default instruction).

    Args:
        tokenizer: The encoder's tokenizer.
        model_config: The model's config (prompt templates, default instructions).
        max_length: Encoder tokens per text.
        num_hard_negatives: Hard negatives drawn per record (fewer when it has fewer).
        instruct_documents: Format documents with the record's instruction.
        seed: Run seed.
        teacher_prefix: Prefix of the teacher's inputs; ``None``: no distillation inputs.
        teacher_tokenizer: The teacher's tokenizer (``None``: ``tokenizer``, the model's own encoder).
    """

    tokenizer: object
    model_config: LusiferConfig
    max_length: int
    num_hard_negatives: int
    instruct_documents: bool
    seed: int
    teacher_prefix: str | None = None
    teacher_tokenizer: object = None

    def __call__(self, rows: list[dict], keys: list[tuple[int, int]],
                 extra: list[str] | None = None) -> dict[str, torch.Tensor]:
        queries = [_format(self.model_config, "query", row["query"], row["instruction"]) for row in rows]
        positives, negatives, raw_negatives = [], [], []
        for row, key in zip(rows, keys, strict=True):
            instruction = row["instruction"] if self.instruct_documents else ""
            positives.append(_format(self.model_config, "document", row["positive"], instruction))
            pool = list(row["negatives"] or [])
            if len(pool) > self.num_hard_negatives:
                pool = example_rng(self.seed, *key).sample(pool, self.num_hard_negatives)
            negatives.extend(_format(self.model_config, "document", n, instruction) for n in pool)
            raw_negatives.extend(pool)
        q = self._tokenize(queries)
        d = self._tokenize(positives + negatives)
        batch = {
            "query_ids": q["input_ids"],
            "query_mask": q["attention_mask"],
            "doc_ids": d["input_ids"],
            "doc_mask": d["attention_mask"],
        }
        if extra and self.teacher_prefix is None:
            raise ValueError("extra distillation texts need teacher_prefix (distillation on)")
        if self.teacher_prefix is not None:
            raw = [row["query"] for row in rows] + [row["positive"] for row in rows] + raw_negatives + list(extra or [])
            teacher_tokenizer = self.teacher_tokenizer or self.tokenizer
            t = teacher_tokenizer([self.teacher_prefix + text for text in raw], truncation=True,
                                  max_length=self.max_length, padding=True, return_tensors="pt")
            batch["teacher_ids"], batch["teacher_mask"] = t["input_ids"], t["attention_mask"]
            if extra:
                x = self._tokenize([_format(self.model_config, "query", text, None) for text in extra])
                batch["distill_ids"], batch["distill_mask"] = x["input_ids"], x["attention_mask"]
        return batch

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=True,
            add_special_tokens=self.model_config.add_special_tokens, return_tensors="pt",
        )
