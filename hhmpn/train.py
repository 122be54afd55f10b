"""``python -m hhmpn.train``: the documented spelling of ``hhmpn-train`` (the command is ``pipelines.train``)."""

if __name__ == "__main__":
    import sys

    from pipelines.train import main

    sys.exit(main())
