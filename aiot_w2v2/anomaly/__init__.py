"""Anomaly scoring on machine sounds: the wav2vec 2.0 scorers, DCASE metrics, the baseline and the report.

- `frontend`      one deterministic pass of a pretrained wav2vec 2.0 over scoring windows (codes,
                  fixed-mask contrastive predictions, a pooled embedding).
- `scorers`       the scorers' fits and scores (contrastive, code statistics, kNN, Mahalanobis).
- `scoring_model` `ScoringModel` (nn.Module: windows -> scores, statistics as buffers), `ScoringConfig`,
                  save / load of a model folder.
- `clips`         clips -> windows with the bad-input rules `fit` and `evaluate` share.
- `fit`           `fit_scoring` (behind `aiot-w2v2 fit`): statistics, cross-fitted calibration, thresholds.
- `evaluate`      `evaluate` (behind `aiot-w2v2 evaluate`): scores, metrics, DCASE csvs, report.
- `metrics`       AUC / pAUC as the DCASE evaluators, gamma thresholds, precision / recall / F1, the
                  contract `results.csv` table, `results_extended.csv`, the DCASE submission csv files.
- `baseline`      the DCASE 2020 Task 2 autoencoder baseline (`run_baseline`, behind `aiot-w2v2 baseline`).
- `report`        `report.html` (ROC curves, score histograms) and the console summary.

Submodules are imported on use (most pull in torch); nothing is imported here.
"""
