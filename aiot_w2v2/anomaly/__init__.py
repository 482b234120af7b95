"""Anomaly scoring on machine sounds: metrics, thresholds, the DCASE baseline and the report.

- `metrics`  AUC / pAUC as the DCASE evaluators, gamma thresholds, precision / recall / F1, the
             contract `results.csv` table, `results_extended.csv`, the DCASE submission csv files.
- `baseline` the DCASE 2020 Task 2 autoencoder baseline (`run_baseline`, behind `aiot-w2v2 baseline`).
- `report`   `report.html` (ROC curves, score histograms) and the console summary.

Submodules are imported on use (the baseline pulls in torch); nothing is imported here.
"""
