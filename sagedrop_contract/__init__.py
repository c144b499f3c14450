"""What the Lambda, the training container and the endpoint must agree on, in one place.

Standard library only, so every room can carry it: the Lambda package vendors it
(``sagedrop aws deploy``), ``sourcedir.tar.gz`` carries it next to ``train.py``
(``pack_training_code``), the model artifact's ``code/`` carries the artifact's part
(``serving_code``), and the local environment installs it. One import name everywhere:
``sagedrop_contract``.

- ``job_contract``: metric lines, the tuning objective, rule names and verdict codes.
- ``dataset_rules``: what a dataset zip may hold and how its folders become classes.
- ``hyperparameter_rules``: the allow-list of what a dataset may set, with its bounds.
- ``artifact_layout``: the model artifact's files and ``config.json``, written and read.
"""
