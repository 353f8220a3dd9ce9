# Sourced (not run) by the click-model distillation scripts (distill_losses.sh,
# quantized_distill.sh, families_click.sh, data_free_click.sh), with OUT and BIN set: writes the
# synthetic logs of one hidden model (model seed 1) under $OUT/data, TEACHER_ROWS rows (default
# 4M) the students never see plus 1M training and 100k validation rows, trains the teacher (the
# default click model) on the first into $OUT/teacher, and sets COMMON (the options every run
# shares) and T (the teacher's checkpoint). Files already there are kept, so the scripts share one
# teacher on one OUT. CLUSTERS=K draws the logs with K latent clusters that correlate the fields
# (`criteo generate --clusters`); DEVICE=cuda trains on the GPU.
TEACHER_ROWS=${TEACHER_ROWS:-4000000}
mkdir -p "$OUT/data"
gen() { [ -f "$OUT/data/$1.tsv" ] || "$BIN" criteo generate --out "$OUT/data/$1.tsv" --rows "$2" --model-seed 1 --seed "$3" --clusters "${CLUSTERS:-0}" > /dev/null; }
gen teacher "$TEACHER_ROWS" 11
gen train 1000000 12
gen valid 100000 13
COMMON=(--device "${DEVICE:-cpu}" --cache "$OUT/cache" --log-every 100000 --valid "$OUT/data/valid.tsv")
[ -f "$OUT/teacher/result.json" ] || "$BIN" criteo train "${COMMON[@]}" --train "$OUT/data/teacher.tsv" --out "$OUT/teacher" > "$OUT/teacher.log" 2>&1
T="$OUT/teacher/checkpoint.safetensors"
