# Run from the repository root on the project's 2-core CPU (no GPU), 2026-11-23, two such commands at a time
# (two lanes, one torch thread each). Each command resumes into the folder and skips finished (method, seed) runs.
# DATA is a folder holding multi30k/ (Multi30k task 1, data/task1/raw of github.com/multi30k/dataset) and
# dialogsumx/ (DialogSumX, dialogsumx.{train,dev,test}.jsonl.gz, from github.com/cylnlp/convsumx).

# Run 1: LoRA r8 and NeFT matched to it, two seeds.
peft-neft compare --task summarization --source-lang en --target-lang fr \
  --train $DATA/dialogsumx/dialogsumx.train.jsonl.gz --source-field en_dialogue --target-field fr_summary \
  --validation $DATA/dialogsumx/dialogsumx.dev.jsonl.gz --limit-validation 32 \
  --eval $DATA/dialogsumx/dialogsumx.test.jsonl.gz --limit-eval 200 \
  --methods lora:8,neft:match-lora:8 --seeds 0,1 --steps 20 --batch-size 4 --eval-every 20 \
  --calibration-steps 10 --max-source-tokens 384 --max-new-tokens 80 --eval-batch-size 16 --threads 1 \
  --out docs/results/grid-dialogsumx-en-fr

# Run 2: the untrained model.
peft-neft compare --task summarization --source-lang en --target-lang fr \
  --train $DATA/dialogsumx/dialogsumx.train.jsonl.gz --source-field en_dialogue --target-field fr_summary \
  --validation $DATA/dialogsumx/dialogsumx.dev.jsonl.gz --limit-validation 32 \
  --eval $DATA/dialogsumx/dialogsumx.test.jsonl.gz --limit-eval 200 \
  --methods base --seeds 0 --steps 20 --batch-size 4 --eval-every 20 \
  --calibration-steps 10 --max-source-tokens 384 --max-new-tokens 80 --eval-batch-size 16 --threads 1 \
  --out docs/results/grid-dialogsumx-en-fr
