"""A helper module of the test models' own: interned into their archives by shoal.export."""


def gated_scale(x, threshold):
    # Data-dependent Python control flow: which branch runs depends on the values.
    if float(x.abs().mean()) > threshold:
        return x * 0.5, "damped"
    return x * 2.0, "amplified"


def count_positive(x):
    n = 0
    for v in x.flatten().tolist():
        if v > 0:
            n += 1
    return n
