"""jem_tf.registry.Registry: the name -> class table behind the objective and evaluation registries."""

import pytest

from jem_tf.registry import Registry


class Base:
    pass


def test_register_names_the_class_and_get_returns_it():
    table = Registry("widget", name_attribute="widget_name", base=Base)

    @table.register("round")
    class Round(Base):
        pass

    assert Round.widget_name == "round" and table.get("round") is Round and "round" in table
    assert table.register("round")(Round) is Round  # the same class again (a reload) is fine
    assert table.names() == ("round",)
    table.unregister("round")
    assert table.names() == () and "round" not in table


def test_a_taken_name_a_wrong_base_and_an_unknown_name_are_refused():
    table = Registry("widget", base=Base)
    table.register("round")(type("Round", (Base,), {}))
    with pytest.raises(ValueError, match=r"The widget 'round' is already registered \(Round\); Square cannot"):
        table.register("round")(type("Square", (Base,), {}))
    with pytest.raises(TypeError, match=r"@register\('odd'\) expects a Base subclass"):
        table.register("odd")(object)
    with pytest.raises(ValueError, match=r"Unknown widget 'oval'; registered: round\."):
        table.get("oval")
    custom = Registry("widget", unknown=lambda name, names: f"no {name} among {names}")
    with pytest.raises(ValueError, match=r"no oval among \(\)"):
        custom.get("oval")


def test_both_registries_use_it():
    from jem_tf.evaluation import registry as evaluations  # noqa: PLC0415
    from trainers import registry as objectives  # noqa: PLC0415

    assert isinstance(evaluations._EVALUATIONS, Registry) and isinstance(objectives._OBJECTIVES, Registry)
