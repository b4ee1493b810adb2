"""One plain training loop per stage of the paper, each built on `llamaforge.trainer`.

Every stage module exposes `main(argv) -> int` (its `llamaforge <stage>` command) and a
function taking its typed config, e.g. `llamaforge.stages.pretrain.pretrain(cfg)`.
"""
