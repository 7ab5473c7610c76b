"""The HTTP service: source data (``GET /data``) and job control (``/jobs``)."""
