"""The retraining loop's stages as library functions (issue 15): each takes files in and gives files out, so
`edgefleet loop stage NAME` and an outside orchestrator (Airflow, Argo, Prefect) run the same code.

- `offline_eval`: the candidate bundle against the serving one on held-out and recently captured data,
  overall and per slice, with intervals, baselines and sanity checks, before any rollout.
"""
