"""The Hydra configs (``configs/`` at the repository's top is a link here): inside the
package so that an installed wheel's ``spp-train`` / ``spp-eval`` / ``spp-detect`` /
``spp-propose`` find them (``pkg://spp_det.configs``)."""
