"""Calibration data: batches of token ids, each tagged with the domain it came from.

    >>> from reapkit import data
    >>> batches = data.calibration_batches("math:8", tokenizer, batch_size=8, max_length=64)
    >>> batches[0].domain, batches[0].input_ids.shape
    ('math', torch.Size([8, 64]))
    >>> data.calibration_batches("tokens.jsonl", None)[0].domain   # token ids, no tokenizer needed  # doctest: +SKIP
    'tokens'

Three kinds of source, combined in one *spec* (a string, a list of :class:`~reapkit.data.spec.SpecItem`, or a dict
``{domain: count}`` of built-in domains):

* **Built-in domains** ``code``, ``prose``, ``tools`` and ``math`` (no download, nothing
  third-party copied into the repository): texts assembled at run time from what the Python
  installation ships, each in a ``train``, ``validation`` or ``calibration`` split; see
  :mod:`reapkit.data.domains`.
* **Data sets** through the ``datasets`` library, from a hub name or a local ``.json``/``.jsonl``/
  ``.parquet`` file, in the schemas of :data:`~reapkit.data.schemas.DATASET_SCHEMAS` (detected from the field names).
* **Token files**: a ``.jsonl`` file with one JSON list of token ids per line (domain = file stem;
  no tokenizer needed).

Spec grammar, comma-separated entries ``[domain@]source[:count]``::

    code:128,tools:64,prose:64,math:32                 built-in domains
    evol-codealpaca-v1@/data/evol.jsonl:256            data set file, domain "evol-codealpaca-v1"
    xlam@Salesforce/xlam-function-calling-60k:128      hub data set (split "train")
    runs/tokens.jsonl                                  token-id file, all lines, domain "tokens"

A missing count means "all" (all samples of the split for a built-in domain).

Chat-formatted samples (every schema except plain ``text``) are rendered once with
``tokenizer.apply_chat_template(messages, tokenize=False)`` and the rendered string is tokenized
with ``add_special_tokens=False``, so the template's BOS is the only BOS. A tokenizer without a chat
template gets the plain fallback :func:`~reapkit.data.batches.plain_chat` (one ``role: content`` line block per message,
tool calls as JSON), unless ``chat_fallback=False``, which raises instead. Plain text is tokenized
with ``add_special_tokens=True``. Samples are truncated to ``max_length`` tokens and never packed:
one sample per row, right padding, ``attention_mask`` 0 on padding. Every batch holds one domain.

The package, one module per concern: :mod:`~reapkit.data.spec` (parsing specs),
:mod:`~reapkit.data.batches` (encoding and batching), :mod:`~reapkit.data.domains` (the built-in
domains) and :mod:`~reapkit.data.schemas` (data-set schemas). Names load lazily, so reading the
domain names does not import torch.
"""

from reapkit.lazy import lazy_exports

_EXPORTS = {
    "batches": [
        "MIN_MAX_LENGTH",
        "Batch",
        "calibration_batches",
        "content_hash",
        "encode_sample",
        "pad_batches",
        "plain_chat",
        "read_token_file",
    ],
    "domains": ["BUILTIN_DOMAINS", "DOMAINS", "SPLITS", "domain_texts", "split_of"],
    "schemas": ["DATASET_SCHEMAS", "DatasetSchema", "detect_schema", "load_records", "to_sample"],
    "spec": ["DEFAULT_SPEC", "SpecItem", "parse_spec"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
