"""``python -m hhmpn.predict``: the documented spelling of ``hhmpn-predict`` (the command is ``pipelines.predict``;
the library is ``mmer.predict`` and ``mmer.inference``)."""

if __name__ == "__main__":
    import sys

    from pipelines.predict import main

    sys.exit(main())
