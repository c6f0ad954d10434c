# Run from the repository root on the project's 2-core CPU (no GPU), 2026-11-23, two such commands at a time
# (two lanes, one torch thread each). Each command resumes into the folder and skips finished (method, seed) runs.
# DATA is a folder holding multi30k/ (Multi30k task 1, data/task1/raw of github.com/multi30k/dataset) and
# dialogsumx/ (DialogSumX, dialogsumx.{train,dev,test}.jsonl.gz, from github.com/cylnlp/convsumx).

# Learning-rate probe: LoRA r8 and NeFT r8 at 3x their default rates (seed 0); the 1x runs are in
# docs/results/grid-multi30k-en-fr (same data, seed, steps and validation set).
peft-neft compare --task translation --source-lang en --target-lang fr \
  --train $DATA/multi30k/train.en.gz $DATA/multi30k/train.fr.gz --limit-train 2000 \
  --validation $DATA/multi30k/val.en.gz $DATA/multi30k/val.fr.gz --limit-validation 100 \
  --eval $DATA/multi30k/test_2016_flickr.en.gz $DATA/multi30k/test_2016_flickr.fr.gz --limit-eval 500 \
  --methods lora:8,neft:match-lora:8 --seeds 0 --steps 30 --batch-size 8 --eval-every 15 --lr-grid 3 \
  --calibration-steps 10 --max-new-tokens 40 --eval-batch-size 32 --threads 1 --out docs/results/lrprobe-multi30k-en-fr
