"""`python -m evals run [--suite tiny|smoke|full|gpu] [--planner rules|llm|recorded] [--out DIR]`."""

from evals.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
