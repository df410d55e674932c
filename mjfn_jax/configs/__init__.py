"""The shipped configs, one per dataset a user trains on; each module's ``get_config(arg)``
returns an ``ml_collections.ConfigDict`` (``mjfn_jax.config.base_config`` plus what differs).

``mjfn_jax.config_io.load_config("casme2")`` (or ``--config casme2``) names one by its module;
a path to a config file works too (``--config my_config.py:smoke``)."""
