# Originally run with --out docs/results/multi30k-en-fr; the folder was renamed to pilot-multi30k-en-fr when the larger grid (grid-*) was run.
# Run 1 (05:50-06:30 UTC, 2-core shared CPU): finished base, lora:8, neft:match-lora:8 for seed 0, stopped during base@seed1.
# DATA is a folder holding multi30k/ (Multi30k task 1, data/task1/raw of github.com/multi30k/dataset) and
# dialogsumx/ (DialogSumX, dialogsumx.{train,dev,test}.jsonl.gz, from github.com/cylnlp/convsumx).
peft-neft compare --task translation --source-lang en --target-lang fr \
  --train $DATA/multi30k/train.en.gz $DATA/multi30k/train.fr.gz --limit-train 2000 \
  --validation $DATA/multi30k/val.en.gz $DATA/multi30k/val.fr.gz --limit-validation 64 \
  --eval $DATA/multi30k/test_2016_flickr.en.gz $DATA/multi30k/test_2016_flickr.fr.gz --limit-eval 200 \
  --methods base,lora:8,neft:match-lora:8 --seeds 0,1 --steps 30 --batch-size 8 --eval-every 15 \
  --calibration-steps 10 --max-new-tokens 40 --threads 1 --out docs/results/pilot-multi30k-en-fr

# Run 2 (from 06:30 UTC): the same settings without the seed-independent base row; resumes, skipping seed 0.
peft-neft compare --task translation --source-lang en --target-lang fr \
  --train $DATA/multi30k/train.en.gz $DATA/multi30k/train.fr.gz --limit-train 2000 \
  --validation $DATA/multi30k/val.en.gz $DATA/multi30k/val.fr.gz --limit-validation 64 \
  --eval $DATA/multi30k/test_2016_flickr.en.gz $DATA/multi30k/test_2016_flickr.fr.gz --limit-eval 200 \
  --methods lora:8,neft:match-lora:8 --seeds 0,1 --steps 30 --batch-size 8 --eval-every 15 \
  --calibration-steps 10 --max-new-tokens 40 --threads 1 --out docs/results/pilot-multi30k-en-fr

# Run 3 (07:07-07:23 UTC, idle machine): the ablations and full fine-tuning for seed 0; resumes into the same folder.
peft-neft compare --task translation --source-lang en --target-lang fr \
  --train $DATA/multi30k/train.en.gz $DATA/multi30k/train.fr.gz --limit-train 2000 \
  --validation $DATA/multi30k/val.en.gz $DATA/multi30k/val.fr.gz --limit-validation 64 \
  --eval $DATA/multi30k/test_2016_flickr.en.gz $DATA/multi30k/test_2016_flickr.fr.gz --limit-eval 200 \
  --methods neft-random:match-lora:8,neft-reversed:match-lora:8,full --seeds 0 --steps 30 --batch-size 8 --eval-every 15 \
  --calibration-steps 10 --max-new-tokens 40 --threads 1 --out docs/results/pilot-multi30k-en-fr
