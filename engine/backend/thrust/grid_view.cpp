// qforge — the device view of a grid (grid_view.h), built on the host with g++ so that the
// device code never includes quant/grid.h.
#include "backend/thrust/grid_view.h"

#include "quant/grid.h"

namespace qf {

bool grid_view(const Grid& g, GridView* v) {
  if (g.spec.kind != GridKind::Uniform) return false;
  v->scale = g.scale.data();
  v->zero = g.zero.data();
  v->g_idx = g.g_idx.data();
  v->row_group = g.spec.row_group.empty() ? nullptr : g.spec.row_group.data();
  v->group_bits = g.spec.group_bits.empty() ? nullptr : g.spec.group_bits.data();
  v->rows = g.rows;
  v->cols = g.cols;
  v->ngroups = g.ngroups;
  v->nrowgroups = g.nrowgroups();
  v->bits = g.spec.bits;
  v->float_zero = g.spec.float_zero;
  return true;
}

}  // namespace qf
