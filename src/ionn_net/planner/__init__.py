"""Planning: which layers to upload in which order, and where each query runs.

Pure (no keras, no asyncio, no clock reads). Modules:

* :mod:`.link` - the link model; :mod:`.energy` - client power and objectives;
* :mod:`.profiles` - client per-layer profiles and their cache;
* :mod:`.costmodel` - the server's per-layer-type execution/load regressions (§10.10);
* :mod:`.prior` - the server's per-class prior of a client's layers (§10.11);
* :mod:`.execution` - the plan of one query (methods ``fine`` and ``ionn``);
* :mod:`.workload` - planning context, query pattern, execution policy, upload plan;
* :mod:`.upload` - the strategy registry (:func:`~.upload.get_planner`) and the
  ``local``, ``all_at_once`` and ``ionn`` strategies; :mod:`.efficiency` (EMDL 2019)
  and :mod:`.ours`;
* :mod:`.precision` - precision-first uploads: base stages first, then refinements;
* :mod:`.simulate` - the discrete-event simulator every strategy is measured with, and
  :mod:`.timeline` - the records and metrics of one simulation.
"""
