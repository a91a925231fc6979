"""The release: from the datasets and a GPU cluster to the published zoo and the paper's tables, in one resumable
command (``python -m training.release --help``; README "Releasing the zoo").

One concept per module:

* :mod:`.graph`: the jobs (:class:`~.graph.Job`: command, dependencies, outputs, GPUs) and their order;
* :mod:`.datasets_check`: every dataset a job reads, opened with the training readers, and its fingerprint;
* :mod:`.estimate`: GPU-hours and wall time from measured throughput;
* :mod:`.manifest`: the job records and ``release.json``; what makes a job "done";
* :mod:`.executors`: running a job, the local and submitit backends, the driver;
* :mod:`.verify`: the verify jobs (a zoo entry loads, equals its checkpoint, and is measured);
* :mod:`.hub`: the hub folders, ``sentizoo/published.py`` and the upload, generated from the manifest;
* :mod:`.rehearsal`: the whole graph at toy scale on miniature datasets.
"""
