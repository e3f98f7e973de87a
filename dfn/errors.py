class InputError(ValueError):
    """Bad input the user can fix (a file, a shape, a config value).

    `train.py` and `eval.py` report it as one line; `HYDRA_FULL_ERROR=1` shows the traceback.
    """
