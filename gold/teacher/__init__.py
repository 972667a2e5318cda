"""Where the teacher's rows come from: a local model, a served one, or a cache (:mod:`gold.teacher.local`,
:mod:`gold.teacher.served`, :mod:`gold.teacher.cache`); sparse rows and their tail bucket in
:mod:`gold.teacher.sparse`."""

from gold.teacher.local import SELF_TEACHERS, DynamicSelfTeacher, LocalTeacher, Teacher, self_teacher
from gold.teacher.sparse import SparseRows, dense_rows, next_token_ids, stack_rows, top_k_rows

__all__ = ["SELF_TEACHERS", "DynamicSelfTeacher", "LocalTeacher", "SparseRows", "Teacher", "dense_rows",
           "next_token_ids", "self_teacher", "stack_rows", "top_k_rows"]  # fmt: skip
