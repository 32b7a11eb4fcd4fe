"""The run machinery behind the scripts: the training loop (engine), its flags (options), the
arithmetic (numerics), run folders and checkpoints (runs), the data a run trains and tests on
(run_data), logs and curves (recorder), the synthetic pretraining, checkpoint scoring
(checkpoint_eval), pictures, the reproduction grid (reproduction/) and small helpers (utils).

The paper's own pieces stay at the top level: model.py, losses.py, methods.py, eval_utils.py.
"""
