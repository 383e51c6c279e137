"""Fairness: sensitive groups, bias audits on labelled data and global explanations.

``groups`` (group labels of sensitive values) is imported by the registry and must stay
light; ``audit`` (fairlearn) and ``importance`` (SHAP) are imported where they are used.
"""
