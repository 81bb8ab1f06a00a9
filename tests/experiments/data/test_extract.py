"""The corpus extraction's pure parts, on snippets of the SWORD modules' real markup."""

from experiments.data.bible import extract

KJV_IMP = """$$$[ Module Heading ]
$$$Genesis 0:0
<div canonical="true" osisID="Gen" type="book"/> <title type="main">Genesis</title>
$$$Genesis 1:0
<chapter n="1" osisID="Gen.1" sID="Gen.1"/>
$$$Genesis 1:4
And <w lemma="strong:H0430">God</w> <w lemma="strong:H7200">saw</w> the light, that <transChange type="added">it was</transChange> good.<note placement="foot"><reference type="annotateRef">1.4 </reference>the light from: Heb. between</note>
"""


def test_parse_imp_skips_headings_and_introductions():
    verses = list(extract.parse_imp(KJV_IMP))
    assert [verse[:3] for verse in verses] == [("Genesis", 1, 4)]


def test_clean_markup_drops_notes_and_keeps_added_words():
    markup = next(extract.parse_imp(KJV_IMP))[3]
    assert extract.clean_markup(markup) == "And God saw the light, that it was good."


def test_clean_markup_keeps_canonical_titles_and_drops_headings():
    psalm = (
        '<title canonical="true" type="psalm">A Psalm of David.</title> <lg sID="a"/>'
        '<l level="1"/>LORD, how<l level="1"/>are they ¶ increased'
    )
    assert extract.clean_markup(psalm) == "A Psalm of David. LORD, how are they increased"
    assert extract.clean_markup("<title><foreign>א ALEPH.</foreign></title> Blessed") == "Blessed"


def test_clean_markup_spaces_added_words_but_not_enclitics():
    # Reina-Valera: added words touch their neighbours; only an enclitic pronoun belongs there.
    markup = (
        '<w lemma="G3137">María</w><transChange type="added">madre</transChange>'
        '<w lemma="G2385">de Jacobo</w>, <w lemma="H3318">sáca</w>'
        '<transChange type="added">lo</transChange> fuera'
    )
    assert extract.clean_markup(markup) == "María madre de Jacobo, sácalo fuera"


def test_recase_opening():
    usual = extract.usual_casing(["y aconteció que Jehová habló", "pues aconteció así a Jehová"])
    assert usual["aconteció"] == "aconteció" and usual["jehová"] == "Jehová"
    recase = extract.recase_opening
    assert recase("Y ACONTECIÓ que", usual, strip_acrostic=False) == "Y aconteció que"
    assert recase("JEHOVÁ es mi pastor", usual, strip_acrostic=False) == "Jehová es mi pastor"
    assert recase("Salmo. ¡OH Jehová", usual, strip_acrostic=False) == "Salmo. ¡Oh Jehová"
    assert recase("BETH ¿Con qué", usual, strip_acrostic=True) == "¿Con qué"
    # Only the first capitalized word: later ones are inscriptions.
    assert recase("EN SANTIDAD", usual, strip_acrostic=False) == "En SANTIDAD"


def test_length_ratio_filter():
    assert extract.plausible_length_ratio("a" * 100, "b" * 190)
    assert not extract.plausible_length_ratio("a" * 100, "b" * 210)
    assert not extract.plausible_length_ratio("a" * 100, "b" * 45)
    assert extract.plausible_length_ratio("Jesus wept.", "Y lloró Jesús, y dijo algo más.")
