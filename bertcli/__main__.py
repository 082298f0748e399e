"""`python -m bertcli …` and `torchrun -m bertcli pretrain …`."""

from bertcli.cli import main

if __name__ == "__main__":
    main()
