-- Models managed while serving: each record says which version of its model produced
-- it (the content hash of the cfg, weights and names; NULL for records made before),
-- and how many forward passes the image took (1: the whole image at once; tiling
-- makes more).

ALTER TABLE detections ADD COLUMN model_version text;
ALTER TABLE detections ADD COLUMN passes integer NOT NULL DEFAULT 1;
