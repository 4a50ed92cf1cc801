"""The TradingBot API (``trading.r7.dev/v1alpha1``), shared by every program and importing
none of them. Import from the module that states a thing:

- ``constants``: group/version/kind, labels, annotations, env-var names, defaults, enums;
- ``models`` (spec), ``status``, ``base``, ``errors``: the pydantic models and their
  validation messages (the CRD under ``crds/`` is tested to agree);
- ``params``, ``risk``, ``exchanges``, ``cel``: validators of strategy parameters and risk
  limits, the exchange list, and the CEL rules the CRD carries;
- ``kubeclient``, ``audit_http``: the async Kubernetes client and the audit HTTP client;
- ``times``, ``tables``, ``logs``: plumbing every program shares.
"""
