"""`Embedder`: embed texts with an exported LUSIFER model on ONNX Runtime (CPU or CUDA), without torch."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from lusifer.runtime.batching import Batch, make_batch, plan_batches
from lusifer.runtime.errors import EmbedError, ExportFolderError
from lusifer.runtime.export_folder import open_export
from lusifer.runtime.session import GraphRunner, create_session, resolve_device
from lusifer.runtime.tokenize import TextTokenizer, TokenizedTexts
from lusifer.onnx_interface import ONE_ROW_PER_PASS_QUANTIZATIONS
from lusifer.vectors import l2_normalize

logger = logging.getLogger(__name__)

# Padded tokens (rows x longest row) per forward pass, rows per pass, and rows per length-sorting window
# (= committed chunk of a corpus job), by device kind. On an H100 (81M-parameter model, runtime/benchmark.py
# corpus) windows of 8192 rows with 16-32k-token batches ran 7400 rows/s vs 6300-6600 with 2048-row windows;
# on CPU the smaller window keeps the work lost to a kill short.
# CUDA: 65536 / 2048 measured on an H200 against 16384 / 512 (lusifer-small, 200k rows): lusifer-embed +14%
# tokens/s, end to end 93.5% of model-only instead of 87% (fewer, larger batches: less launch work per token)
DEFAULT_TOKEN_BUDGET = {"cpu": 8192, "cuda": 65536}
DEFAULT_MAX_BATCH_ROWS = {"cpu": 512, "cuda": 2048}
DEFAULT_WINDOW_ROWS = {"cpu": 2048, "cuda": 8192}
MAX_INFLIGHT = 8
# Variants whose graph computes its quantisation scales per forward pass (dynamic INT8: DynamicQuantizeLinear
# takes one scale for the whole [rows, tokens, features] activation, padding included). Batched, a row's
# vector would depend on the other rows of its batch: on 2,048 corpus rows of lusifer-small, batched INT8 had
# min cosine 0.956 to fp32 (75 rows below 0.98) and one row per pass 0.984 (mean 0.9985), at the same speed
# on 2 CPU cores. These variants therefore run one row per forward pass. The "int8-block" graphs (the default
# INT8 scheme) quantise activations per row and block, so they run batched like fp32.


def check_texts(texts: Sequence, where: str = "texts") -> None:
    """Raise ``ValueError`` naming the first element that is not a string."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{where}[{i}] is {t!r} ({type(t).__name__}); expected str")


class Embedder:
    """Embeds texts with an export folder on ONNX Runtime.

    Loading checks the export (files present, sha256 of the graph and tokenizer), picks the variant (fp16 on
    CUDA; int8 if present, else fp32 on CPU) and verifies that the session really runs on the device asked
    for.

    Args:
        export_dir: Export folder written by ``lusifer-export``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. ``"cuda"`` never falls back to CPU.
        variant: ONNX variant name (``"fp32"``, ``"fp16"``, ``"int8"``); ``None`` picks by device.
        threads: ONNX Runtime intra-op threads; ``None`` = the physical cores on CPU, 1 on CUDA.
        verify: Check sha256 checksums of the graph and tokenizer files (default on).
        inflight: Batches run at once by :meth:`run_batches` (default 1), each from its own thread. With 2 on
            CUDA, ONNX Runtime can launch one batch while the GPU still computes the previous one; results
            are the same and come back in order. On CPU keep 1: the intra-op threads already use every core.
        max_length: Most tokens per text (prompt and special tokens included), from 1 to the export's
            ``max_length`` (the default); longer texts are cut on the right.

    Building an ``Embedder`` changes no process environment variable. On CUDA, ``lusifer-embed`` also caps the
    tokenizer's thread pool (:func:`lusifer.runtime.tokenize.cuda_tokenizer_env`, ``RAYON_NUM_THREADS=4``) to
    leave cores to the thread that launches the kernels; a program embedding a large corpus on CUDA can apply
    it itself before its first ``embed``.

    Example:
        >>> emb = Embedder("export/", device="cpu")
        >>> vecs = emb.embed(["Кошка спит.", "The cat sleeps."], kind="query")
    """

    def __init__(
        self,
        export_dir: str | os.PathLike,
        device: str = "auto",
        variant: str | None = None,
        threads: int | None = None,
        verify: bool = True,
        inflight: int = 1,
        max_length: int | None = None,
    ):
        if isinstance(inflight, bool) or not isinstance(inflight, int) or not 1 <= inflight <= MAX_INFLIGHT:
            raise ValueError(f"inflight={inflight!r}: expected an integer from 1 to {MAX_INFLIGHT}")
        self.inflight = inflight
        self._pool = ThreadPoolExecutor(inflight, thread_name_prefix="lusifer-infer") if inflight > 1 else None
        self.device = resolve_device(device)
        self.export = open_export(export_dir, self.device.kind, variant, verify=verify)
        self.manifest = self.export.manifest
        self.tokenizer = TextTokenizer(self.export.tokenizer_path, self.manifest, max_length)
        if self.device.kind == "cpu" and self.manifest.variants[self.variant].dtype == "fp16":
            logger.warning("running the fp16 graph on CPU is slow; prefer --variant fp32 or int8 on CPU")
        self.session = create_session(self.export.graph_path, self.device, threads)
        self.runner = GraphRunner(self.session, self.device)
        self.threads = self.session.get_session_options().intra_op_num_threads
        quantization = self.manifest.variants[self.variant].quantization
        self.one_row_per_pass = quantization in ONE_ROW_PER_PASS_QUANTIZATIONS
        self._warned_rows = False
        if self.one_row_per_pass:
            logger.info("variant %s (%s quantisation, scales per forward pass): one row per forward pass, so "
                        "each vector depends on its own text only", self.variant, quantization)
        logger.info(
            "loaded %s (variant %s) on %s via %s", self.export.folder, self.variant, self.device, self.provider
        )

    # ---- facts ---------------------------------------------------------------------------------
    @property
    def variant(self) -> str:
        return self.export.variant

    @property
    def provider(self) -> str:
        return self.runner.provider

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def max_length(self) -> int:
        """Most tokens per text: the ``max_length`` given, else the export's."""
        return self.tokenizer.max_length

    @property
    def model_sha256(self) -> str:
        return self.export.model_sha256

    @property
    def default_token_budget(self) -> int:
        return DEFAULT_TOKEN_BUDGET[self.device.kind]

    @property
    def default_window_rows(self) -> int:
        return DEFAULT_WINDOW_ROWS[self.device.kind]

    def rows_per_pass(self, max_batch_rows: int | None) -> int:
        """Most rows per forward pass: ``max_batch_rows`` (default 512 on CPU, 2048 on CUDA), or 1 for a variant
        whose quantisation scales are computed per pass (see :data:`ONE_ROW_PER_PASS_QUANTIZATIONS`)."""
        default = DEFAULT_MAX_BATCH_ROWS[self.device.kind]
        requested = max_batch_rows or default
        if self.one_row_per_pass and requested > 1:
            if max_batch_rows not in (None, default) and not self._warned_rows:  # asked for
                logger.warning("max_batch_rows=%d ignored: variant %s runs one row per forward pass (its "
                               "quantisation scales are per pass)", max_batch_rows, self.variant)
                self._warned_rows = True
            return 1
        return requested

    # ---- steps ---------------------------------------------------------------------------------
    def warmup(self, token_budget: int | None = None, max_batch_rows: int | None = None) -> float:
        """Run one full-size batch so the first real batch does not pay for device set-up.

        On CUDA, ONNX Runtime creates its cuBLAS/cuDNN handles, loads kernels and grows its memory arena on
        the first runs; a corpus job calls this while loading (as benchmarks warm up before timing). The batch
        is ``token_budget`` padded tokens at the longest length a batch can have (``max_length``).

        Returns:
            Seconds spent.
        """
        budget = token_budget or self.default_token_budget
        seq = max(1, min(self.max_length, budget))
        rows = max(1, min(self.rows_per_pass(max_batch_rows), budget // seq))
        input_ids = np.full((rows, seq), self.manifest.pad_token_id, dtype=np.int64)
        attention_mask = np.ones((rows, seq), dtype=np.int64)
        t0 = time.perf_counter()
        self.runner(input_ids, attention_mask)
        seconds = time.perf_counter() - t0
        logger.debug("warm-up batch [%d, %d] took %.3f s", rows, seq, seconds)
        return seconds

    def tokenize(self, texts: Sequence[str], kind: str = "query", instruction: str | None = None) -> TokenizedTexts:
        """Format and tokenise texts (see :class:`~lusifer.runtime.tokenize.TextTokenizer`)."""
        return self.tokenizer.encode(texts, kind, instruction)

    def make_batches(
        self, tokens: TokenizedTexts, token_budget: int | None = None, max_batch_rows: int | None = None
    ) -> list[Batch]:
        """Length-sorted token-budget batches of tokenised texts, padded and ready for :meth:`run_batches`.

        A corpus job builds them on its reader thread, so that the inference thread only runs the graph.

        Args:
            tokens: Tokenised texts.
            token_budget: Most padded tokens per forward pass (default by device).
            max_batch_rows: Most rows per forward pass (1 for INT8 variants, see :meth:`rows_per_pass`).
        """
        budget = token_budget or self.default_token_budget
        max_rows = self.rows_per_pass(max_batch_rows)
        pad = self.manifest.pad_token_id
        return [make_batch(tokens, positions, pad) for positions in plan_batches(tokens.lengths, budget, max_rows)]

    def run_batches(
        self, batches: Sequence[Batch], rows: int, on_batch: Callable[[int, int, int], None] | None = None
    ) -> np.ndarray:
        """Run the graph over batches from :meth:`make_batches`.

        Args:
            batches: The batches; their positions together cover ``range(rows)`` once.
            rows: Number of texts the batches came from.
            on_batch: Called after each batch with ``(rows, real_tokens, padded_tokens)``.

        Returns:
            float32 ``(rows, dim)`` in the input order, NOT normalised.
        """
        out = np.empty((rows, self.dim), dtype=np.float32)

        def finish(batch: Batch, emb: np.ndarray) -> None:
            positions = batch.positions
            if emb.shape != (len(positions), self.dim):
                raise ExportFolderError(
                    f"graph returned shape {emb.shape}; manifest says embedding_dim={self.dim} for "
                    f"{len(positions)} rows"
                )
            bad = ~np.isfinite(emb).all(axis=1)
            if bad.any():
                raise EmbedError(
                    f"the {self.variant!r} graph produced non-finite embeddings for {int(bad.sum())} of "
                    f"{len(positions)} rows of a batch (e.g. fp16 overflow); try --variant fp32"
                )
            out[positions] = emb
            if on_batch is not None:
                on_batch(len(positions), batch.real_tokens, batch.padded_tokens)

        if self._pool is None:
            for batch in batches:
                finish(batch, self.runner(batch.input_ids, batch.attention_mask))
            return out
        pending: deque = deque()
        try:
            for batch in batches:
                pending.append((batch, self._pool.submit(self.runner, batch.input_ids, batch.attention_mask)))
                if len(pending) >= self.inflight:
                    done, future = pending.popleft()
                    finish(done, future.result())
            while pending:
                done, future = pending.popleft()
                finish(done, future.result())
        finally:
            for _, future in pending:  # after an error: let the runs in flight end before returning
                future.cancel() or future.exception()
        return out

    def embed_tokens(
        self,
        tokens: TokenizedTexts,
        token_budget: int | None = None,
        max_batch_rows: int | None = None,
        on_batch: Callable[[int, int, int], None] | None = None,
    ) -> np.ndarray:
        """Run the graph over tokenised texts in length-sorted token-budget batches.

        Args:
            tokens: Tokenised texts.
            token_budget: Most padded tokens per forward pass (default by device).
            max_batch_rows: Most rows per forward pass.
            on_batch: Called after each batch with ``(rows, real_tokens, padded_tokens)``.

        Returns:
            float32 ``(len(tokens), dim)`` in the input order, NOT normalised.
        """
        return self.run_batches(self.make_batches(tokens, token_budget, max_batch_rows), len(tokens), on_batch)

    # ---- text API ------------------------------------------------------------------------------
    def embed(
        self,
        texts: Sequence[str] | str,
        kind: str = "query",
        instruction: str | None = None,
        normalize: bool | None = None,
        token_budget: int | None = None,
        max_batch_rows: int | None = None,
    ) -> np.ndarray:
        """Embed texts; same result as ``LusiferModel.encode`` with the same arguments.

        Args:
            texts: Strings (or one string).
            kind: ``"query"`` or ``"document"`` (selects the prompt template).
            instruction: Task instruction; ``None`` uses the export's default for ``kind``, ``""`` none.
            normalize: L2-normalise rows; ``None`` uses the manifest's setting (normally True).
            token_budget: Most padded tokens per forward pass.
            max_batch_rows: Most rows per forward pass.

        Returns:
            float32 ``(len(texts), dim)``, rows in input order.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        check_texts(texts)
        if not texts:
            self.tokenizer.resolve_instruction(kind, instruction)
            return np.zeros((0, self.dim), dtype=np.float32)
        blocks = self.iter_embed(
            texts, kind, instruction, normalize, chunk_rows=max(len(texts), 1), token_budget=token_budget,
            max_batch_rows=max_batch_rows,
        )
        return np.concatenate(list(blocks), axis=0)

    def iter_embed(
        self,
        texts: Iterable[str],
        kind: str = "query",
        instruction: str | None = None,
        normalize: bool | None = None,
        chunk_rows: int | None = None,
        token_budget: int | None = None,
        max_batch_rows: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Streaming form of :meth:`embed` for any iterable (a generator, a file...): memory stays bounded.

        Texts are read ``chunk_rows`` at a time (default 2048 on CPU, 8192 on CUDA), sorted by length inside
        the chunk, and each chunk's embeddings are yielded in input order as a float32 ``(rows, dim)`` array.
        """
        chunk_rows = self.default_window_rows if chunk_rows is None else chunk_rows
        if isinstance(texts, str):
            raise ValueError("iter_embed expects an iterable of strings, not one string")
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows={chunk_rows!r} must be a positive integer")
        self.tokenizer.resolve_instruction(kind, instruction)
        normalize = self.manifest.normalize if normalize is None else normalize
        iterator = iter(texts)
        seen = 0
        while True:
            chunk = []
            for text in iterator:
                chunk.append(text)
                if len(chunk) >= chunk_rows:
                    break
            if not chunk:
                return
            for i, t in enumerate(chunk):
                if not isinstance(t, str):
                    raise ValueError(f"texts[{seen + i}] is {t!r} ({type(t).__name__}); expected str")
            seen += len(chunk)
            emb = self.embed_tokens(self.tokenize(chunk, kind, instruction), token_budget, max_batch_rows)
            yield l2_normalize(emb) if normalize else emb
            if len(chunk) < chunk_rows:
                return
