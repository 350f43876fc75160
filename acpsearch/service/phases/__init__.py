"""The phases of a study, in the order the runner (acpsearch.service.runner) runs them. Each module
has NAME (its record is the study attribute `phase.NAME`), `run(ctx, records, ray_mod) -> Record`
and, when later phases need what it made, `attach(ctx, record) -> StudyRun`.

    base      load the checkpoint or train the base network      -> artifact base.pt, metrics
    encoder   train the GCN structure encoder (if the ranker needs it) -> artifact encoder.pt
    search    Optuna ask/tell over the dynamic space; Ray actors score candidates (one trial each)
    rerank    optional: a costlier ranker re-scores the top tier (Ray actors)
    anchor    the budget's global-magnitude allocation as one more candidate (always a finalist)
    finetune  top-m finalists pruned + fine-tuned as Ray Tune trials (ASHA), one trial each in
              the companion study NAME.finetune (curve = intermediate values; ASHA-stopped = PRUNED);
              with finetune.halving, rung after rung of growing epochs (service/rungs.py)
    select    winner by validation mAP; test mAP of base and finalists (Ray tasks); winner exported
    shorten   optional (spec code:): the winner's code shortened per length -> artifacts bits{K}.pt
    report    study note (markdown), JSON report and plots as artifacts
"""

from acpsearch.service.phases import anchor, base, encoder, finetune, report, rerank, search, select, shorten

PHASES = (base, encoder, search, rerank, anchor, finetune, select, shorten, report)

__all__ = ["PHASES"]
