# The converged comparison's folders merged into one table (2026-12-03; every training's command is in its folder).
docs/results/converged.sh report
