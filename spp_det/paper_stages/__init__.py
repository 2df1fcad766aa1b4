"""The paper's stages after fine-tuning: per-class linear SVMs with hard-negative mining on
fc7, ridge box regressors on pool5, and the one feature pass that feeds both."""
