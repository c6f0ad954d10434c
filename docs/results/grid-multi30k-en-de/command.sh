# Run from the repository root on the project's 2-core CPU (no GPU), 2026-11-23, two such commands at a time
# (two lanes, one torch thread each). Each command resumes into the folder and skips finished (method, seed) runs.
# DATA is a folder holding multi30k/ (Multi30k task 1, data/task1/raw of github.com/multi30k/dataset) and
# dialogsumx/ (DialogSumX, dialogsumx.{train,dev,test}.jsonl.gz, from github.com/cylnlp/convsumx).

# Run 1: stopped on purpose once neft:match-lora:8@seed1 was stored (time), so seed 1 has the r=8 pair only.
peft-neft compare --task translation --source-lang en --target-lang de \
  --train $DATA/multi30k/train.en.gz $DATA/multi30k/train.de.gz --limit-train 2000 \
  --validation $DATA/multi30k/val.en.gz $DATA/multi30k/val.de.gz --limit-validation 100 \
  --eval $DATA/multi30k/test_2016_flickr.en.gz $DATA/multi30k/test_2016_flickr.de.gz --limit-eval 500 \
  --methods lora:8,neft:match-lora:8,lora:64,neft:match-lora:64 --seeds 0,1 --steps 30 --batch-size 8 --eval-every 15 \
  --calibration-steps 10 --max-new-tokens 40 --eval-batch-size 32 --threads 1 --out docs/results/grid-multi30k-en-de

# Run 2: full fine-tuning, seed 0.
peft-neft compare --task translation --source-lang en --target-lang de \
  --train $DATA/multi30k/train.en.gz $DATA/multi30k/train.de.gz --limit-train 2000 \
  --validation $DATA/multi30k/val.en.gz $DATA/multi30k/val.de.gz --limit-validation 100 \
  --eval $DATA/multi30k/test_2016_flickr.en.gz $DATA/multi30k/test_2016_flickr.de.gz --limit-eval 500 \
  --methods full --seeds 0 --steps 30 --batch-size 8 --eval-every 15 \
  --calibration-steps 10 --max-new-tokens 40 --eval-batch-size 32 --threads 1 --out docs/results/grid-multi30k-en-de

# Run 3: the untrained model (evaluated once; it does not depend on the seed).
peft-neft compare --task translation --source-lang en --target-lang de \
  --train $DATA/multi30k/train.en.gz $DATA/multi30k/train.de.gz --limit-train 2000 \
  --validation $DATA/multi30k/val.en.gz $DATA/multi30k/val.de.gz --limit-validation 100 \
  --eval $DATA/multi30k/test_2016_flickr.en.gz $DATA/multi30k/test_2016_flickr.de.gz --limit-eval 500 \
  --methods base --seeds 0 --steps 30 --batch-size 8 --eval-every 15 \
  --calibration-steps 10 --max-new-tokens 40 --eval-batch-size 32 --threads 1 --out docs/results/grid-multi30k-en-de
