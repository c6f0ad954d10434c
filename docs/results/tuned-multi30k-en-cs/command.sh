# Run from the repository root on the project's 2-core CPU (no GPU), 2026-11-23, two compare commands at a time
# (two lanes, one torch thread each). Resumes into the folder and skips finished (method, seed) runs.
# DATA is a folder holding multi30k/ (Multi30k task 1, data/task1/raw of github.com/multi30k/dataset) and
# dialogsumx/ (DialogSumX, dialogsumx.{train,dev,test}.jsonl.gz, from github.com/cylnlp/convsumx).

# LoRA r8 and NeFT matched to it, each trained at 5e-4, 1.5e-3, 4.5e-3 and 1.35e-2 (the same grid for both);
# the rate with the lowest validation loss is kept and only that model is decoded on the test set.
peft-neft compare --task translation --source-lang en --target-lang cs \
  --train $DATA/multi30k/train.en.gz $DATA/multi30k/train.cs.gz --limit-train 2000 \
  --validation $DATA/multi30k/val.en.gz $DATA/multi30k/val.cs.gz --limit-validation 100 \
  --eval $DATA/multi30k/test_2016_flickr.en.gz $DATA/multi30k/test_2016_flickr.cs.gz --limit-eval 500 \
  --methods lora:8,neft:match-lora:8 --seeds 0 --steps 30 --batch-size 8 --eval-every 15 \
  --lr lora=5e-4 --lr neft=5e-4 --lr-grid 1,3,9,27 \
  --calibration-steps 10 --max-new-tokens 40 --eval-batch-size 32 --threads 1 --out docs/results/tuned-multi30k-en-cs
