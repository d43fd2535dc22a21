#!/usr/bin/env python3
"""Build the IFEval agreement response set (input of ifeval_reference.py).

Writes one JSON line per response: {"key", "source", "response"} where source is "model:<file>"
for a bundled model's answer or "edge:<variant>" for a case written here.

(a) model answers: every /tmp/ifeval_responses/*.jsonl (or --responses DIR) with lines
    {"prompt": ..., "response": ...}, matched to input_data.jsonl by prompt text (zero files is fine);
(b) edge cases: for every one of the 541 prompts, deterministic variants built from its
    instructions and kwargs: an attempt that follows every instruction, the same attempt with each
    count one past its boundary and the formatting undone, and stress texts (abbreviations,
    ellipses, quotes, markdown, other languages, empty/whitespace-only, loose-mode decorations).

Deterministic: every random choice comes from random.Random(seeded with the prompt's key).
Usage: python3 benches/eval/ifeval_fixture.py [--input models/eval/ifeval/input_data.jsonl]
           [--responses /tmp/ifeval_responses] [--out /tmp/ifeval_agreement_responses.jsonl]
"""
import argparse
import glob
import json
import os
import random

WORDS = ("river light garden market window story music winter planet signal history bridge "
         "forest people morning city travel coffee science memory language ocean mountain "
         "friend school future energy design letter summer network doctor market picture").split()

OTHER_LANGUAGES = {
    "en": "The weather is pleasant today and many people are walking in the park with their families.",
    "ar": "الطقس جميل اليوم والكثير من الناس يمشون في الحديقة مع عائلاتهم ويستمتعون بالشمس.",
    "bg": "Времето днес е приятно и много хора се разхождат в парка със своите семейства.",
    "bn": "আজ আবহাওয়া খুব সুন্দর এবং অনেক মানুষ তাদের পরিবারের সাথে পার্কে হাঁটছে।",
    "de": "Das Wetter ist heute angenehm und viele Menschen gehen mit ihren Familien im Park spazieren.",
    "fa": "هوا امروز خوب است و بسیاری از مردم با خانواده های خود در پارک قدم می زنند.",
    "fi": "Sää on tänään mukava ja monet ihmiset kävelevät puistossa perheidensä kanssa.",
    "fr": "Il fait beau aujourd'hui et beaucoup de gens se promènent dans le parc avec leur famille.",
    "gu": "આજે હવામાન સુખદ છે અને ઘણા લોકો તેમના પરિવાર સાથે બગીચામાં ફરે છે.",
    "hi": "आज मौसम सुहावना है और बहुत से लोग अपने परिवार के साथ पार्क में टहल रहे हैं।",
    "it": "Oggi il tempo è piacevole e molte persone passeggiano nel parco con le loro famiglie.",
    "kn": "ಇಂದು ಹವಾಮಾನ ಆಹ್ಲಾದಕರವಾಗಿದೆ ಮತ್ತು ಅನೇಕ ಜನರು ತಮ್ಮ ಕುಟುಂಬದೊಂದಿಗೆ ಉದ್ಯಾನದಲ್ಲಿ ನಡೆಯುತ್ತಿದ್ದಾರೆ.",
    "ko": "오늘은 날씨가 좋아서 많은 사람들이 가족과 함께 공원을 산책하고 있습니다.",
    "mr": "आज हवामान छान आहे आणि बरेच लोक आपल्या कुटुंबासोबत बागेत फिरत आहेत.",
    "ne": "आज मौसम रमाइलो छ र धेरै मानिसहरू आफ्नो परिवारसँग पार्कमा घुमिरहेका छन्।",
    "pa": "ਅੱਜ ਮੌਸਮ ਸੁਹਾਵਣਾ ਹੈ ਅਤੇ ਬਹੁਤ ਸਾਰੇ ਲੋਕ ਆਪਣੇ ਪਰਿਵਾਰਾਂ ਨਾਲ ਪਾਰਕ ਵਿੱਚ ਸੈਰ ਕਰ ਰਹੇ ਹਨ।",
    "pt": "O tempo está agradável hoje e muitas pessoas estão passeando no parque com suas famílias.",
    "ru": "Сегодня приятная погода, и многие люди гуляют в парке со своими семьями.",
    "sw": "Hali ya hewa ni nzuri leo na watu wengi wanatembea katika bustani pamoja na familia zao.",
    "ta": "இன்று வானிலை இனிமையாக உள்ளது, பலர் தங்கள் குடும்பத்துடன் பூங்காவில் நடந்து செல்கிறார்கள்.",
    "te": "ఈ రోజు వాతావరణం ఆహ్లాదకరంగా ఉంది మరియు చాలా మంది తమ కుటుంబాలతో పార్కులో నడుస్తున్నారు.",
    "th": "วันนี้อากาศดีและมีผู้คนมากมายเดินเล่นในสวนสาธารณะกับครอบครัวของพวกเขา",
    "ur": "آج موسم خوشگوار ہے اور بہت سے لوگ اپنے خاندان کے ساتھ پارک میں سیر کر رہے ہیں۔",
    "vi": "Hôm nay thời tiết dễ chịu và nhiều người đang đi dạo trong công viên cùng gia đình.",
    "es": "Hoy hace buen tiempo y mucha gente pasea por el parque con sus familias.",
}

STRESS = [
    "Dr. Smith met Mr. J. R. Tolkien at 3 p.m. in the U.S. capital. They talked for hours... "
    "Then they left! Was it worth it? \"Yes,\" said Mrs. Brown. (It was.) The end.",
    "e.g. this line starts lower-case. See Fig. 3 and pp. 12-14 of vol. 2. No. 5 is next.\n\n"
    "A new paragraph begins here. It has two sentences.",
    "* First bullet point\n* Second bullet point\n- A dash item\n  * nested *emphasis* item\n"
    "**Bold heading**\n\nSome text with *one* highlight and ** ** empty ones.",
    "SECTION 1\nIntro text.\nSECTION 2\nMore text here.\nSection 3 is lowercase-ish.\n"
    "P.S. this is a postscript.\nP.P.S and another one.",
    "<<A Title>> followed by text. <<>> is empty. [placeholder] and [another one] and [x].",
    "The price rose 3.5% to $1,200.50 on Jan. 5th, 2023. Inc. and Ltd. firms reacted... "
    "\u201cQuoted sentence.\u201d Another \u2018single\u2019 one! Final words -- with dashes.",
    "WORDS IN CAPITALS LIKE NASA, U.S.A. AND DON'T COUNT DIFFERENTLY. Some are MixedCase. "
    "I AM HERE. OK?",
    "```json\n{\"name\": \"value\", \"list\": [1, 2, 3], \"nested\": {\"a\": null}}\n```",
    "Response one about the topic.\n******\nResponse two, which is different.",
    "\"Wrapped in quotes, this whole answer is one sentence.\"",
    "Line one\n\nLine two\n\n\n\nLine four after blank lines\n\n",
    "No commas here just words and words and more words without any pause at all",
    "Sentence one.Sentence two without space. Sentence three.  Sentence four?! And five",
    "St. Louis and Mt. Everest vs. Mt. Fuji: approx. 8,848 m. Gen. Patton, Sgt. Pepper, "
    "Prof. X. etc. are names. Ph.D. students at M.I.T. work late.",
]


def words_for(rng, n, avoid):
    pool = [w for w in WORDS if w not in avoid] or ["word"]
    return [rng.choice(pool) for _ in range(n)]


def sentences(rng, n, avoid, words_each=8):
    out = []
    for _ in range(n):
        ws = words_for(rng, words_each, avoid)
        out.append(" ".join(ws).capitalize() + ".")
    return out


def attempt(p, rng, off_by_one=False):
    """A response that tries to follow every instruction (off_by_one: miss each boundary by one)."""
    ids, kws = p["instruction_id_list"], p["kwargs"]
    kw = {i: (k or {}) for i, k in zip(ids, kws)}
    avoid = set()
    for i in ids:
        if i == "keywords:forbidden_words":
            avoid |= {w.lower() for w in kw[i].get("forbidden_words") or []}
    d = 1 if off_by_one else 0
    n_sent, n_par = 4, 1
    if "length_constraints:number_sentences" in kw:
        k = kw["length_constraints:number_sentences"]
        t = k.get("num_sentences") or 3
        n_sent = t if k.get("relation") == "at least" else max(t - 1, 1)
        n_sent = n_sent - d if k.get("relation") == "at least" else n_sent + d
        n_sent = max(n_sent, 1)
    for key in ("length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word"):
        if key in kw:
            n_par = (kw[key].get("num_paragraphs") or 2) + d
    par_sep = "\n\n***\n\n" if "length_constraints:number_paragraphs" in kw else "\n\n"
    per_par = max(1, n_sent // n_par)
    paragraphs = [sentences(rng, per_par, avoid) for _ in range(n_par)]
    if "length_constraints:nth_paragraph_first_word" in kw:
        k = kw[key]
        nth = (k.get("nth_paragraph") or 1) - 1
        if 0 <= nth < len(paragraphs):
            fw = k.get("first_word") or "word"
            first = paragraphs[nth][0]
            paragraphs[nth][0] = (fw.capitalize() if not off_by_one else "The") + " " + first[0].lower() + first[1:]
    body_parts = [" ".join(s) for s in paragraphs]
    extras = []
    for i in ids:
        k = kw[i]
        if i == "keywords:existence":
            ks = k.get("keywords") or []
            extras.append("This mentions " + " and ".join(ks[: len(ks) - d] if ks else []) + ".")
        elif i == "keywords:frequency":
            f = k.get("frequency") or 1
            cnt = f if k.get("relation") == "at least" else f - 1
            cnt = cnt - d if k.get("relation") == "at least" else cnt + d
            if cnt > 0:
                extras.append(" ".join([k.get("keyword", "word")] * cnt) + ".")
        elif i == "keywords:forbidden_words" and off_by_one:
            extras.append("We said " + (k.get("forbidden_words") or ["x"])[0] + " here.")
        elif i == "keywords:letter_frequency":
            f = k.get("let_frequency") or 1
            letter = k.get("letter") or "a"
            cnt = f + 1 if k.get("let_relation") == "at least" else max(f - 2, 0)
            extras.append((letter * (cnt - d if k.get("let_relation") == "at least" else cnt + d)) + ".")
        elif i == "detectable_content:number_placeholders":
            n = (k.get("num_placeholders") or 1) - d
            extras.append(" ".join("[field %d]" % j for j in range(n)) + ".")
        elif i == "detectable_format:number_bullet_lists":
            n = (k.get("num_bullets") or 1) + d
            extras.append("\n".join("* point number %d" % j for j in range(n)))
        elif i == "detectable_format:number_highlighted_sections":
            n = (k.get("num_highlights") or 1) - d
            extras.append(" ".join("*highlight %d*" % j for j in range(n)))
        elif i == "detectable_format:multiple_sections":
            sp = k.get("section_spliter") or "Section"
            n = (k.get("num_sections") or 2) - d
            extras.append("\n".join("%s %d\nContent of part %d." % (sp, j + 1, j + 1) for j in range(n)))
        elif i == "detectable_format:constrained_response" and not off_by_one:
            extras.append("My answer is yes.")
        elif i == "change_case:capital_word_frequency":
            f = k.get("capital_frequency") or 1
            cnt = f if k.get("capital_relation") == "at least" else f - 1
            cnt = cnt - d if k.get("capital_relation") == "at least" else cnt + d
            extras.append(" ".join(["IMPORTANT"] * max(cnt, 0)))
        elif i == "language:response_language":
            lang = k.get("language") or "en"
            body_parts = [OTHER_LANGUAGES.get(lang if not off_by_one else "en", OTHER_LANGUAGES["en"])] * 2
    text = par_sep.join(body_parts)
    if extras:
        text = text + " " + " ".join(e for e in extras if e)
    if "length_constraints:number_words" in kw:
        k = kw["length_constraints:number_words"]
        t = k.get("num_words") or 50
        target = t if k.get("relation") == "at least" else t - 1
        target = target - d if k.get("relation") == "at least" else target + d
        import re
        have = len(re.findall(r"\w+", text))
        if have < target:
            text = text + " " + " ".join(words_for(rng, target - have, avoid)) + "."
    if "combination:two_responses" in kw:
        text = text + "\n******\n" + (text if off_by_one else "A second, different answer.")
    if "change_case:english_capital" in kw and not off_by_one:
        text = text.upper()
    if "change_case:english_lowercase" in kw and not off_by_one:
        text = text.lower()
    if "punctuation:no_comma" in kw and not off_by_one:
        text = text.replace(",", "")
    if "detectable_format:title" in kw and not off_by_one:
        text = "<<A fitting title>>\n" + text
    if "combination:repeat_prompt" in kw:
        rp = kw["combination:repeat_prompt"].get("prompt_to_repeat") or ""
        text = (rp[:-1] if off_by_one else rp) + "\n" + text
    if "detectable_content:postscript" in kw:
        m = kw["detectable_content:postscript"].get("postscript_marker") or "P.S."
        text = text + "\n\n" + ("PS" if off_by_one else m) + " a final note."
    if "startend:end_checker" in kw:
        e = kw["startend:end_checker"].get("end_phrase") or ""
        text = text + " " + (e + " Thanks." if off_by_one else e)
    if "detectable_format:json_format" in kw:
        text = json.dumps({"answer": text}) if not off_by_one else "```json\n{\"answer\": " + json.dumps(text) + "\n```x"
        text = "```json\n" + text + "\n```" if not off_by_one else text
    if "startend:quotation" in kw and not off_by_one:
        text = '"' + text + '"'
    return text


def stress(p, rng, idx):
    base = STRESS[idx % len(STRESS)]
    mode = (idx // len(STRESS)) % 6
    if mode == 1:
        base = base.upper()
    elif mode == 2:
        base = base.lower()
    elif mode == 3:
        base = "Sure, here is my answer:\n" + base + "\nI hope this helps!"
    elif mode == 4:
        base = "**" + base.replace(". ", ".** **") + "**"
    elif mode == 5:
        langs = sorted(OTHER_LANGUAGES)
        base = OTHER_LANGUAGES[langs[rng.randrange(len(langs))]]
    return base


def special(p, rng, idx):
    kind = idx % 8
    if kind == 0:
        return ""
    if kind == 1:
        return "   \n\t "
    if kind == 2:
        return "Intro line\n" + attempt(p, random.Random(p["key"] + 7)) + "\nOutro line"
    if kind == 3:
        return attempt(p, random.Random(p["key"] + 11)).replace(" ", " *", 3)
    if kind == 4:
        return p["prompt"] + "\n" + attempt(p, random.Random(p["key"] + 13))
    if kind == 5:
        return attempt(p, random.Random(p["key"] + 17)).upper()
    if kind == 6:
        return attempt(p, random.Random(p["key"] + 19)).lower().replace(",", "")
    return '"' + attempt(p, random.Random(p["key"] + 23), off_by_one=True) + '"'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default="models/eval/ifeval/input_data.jsonl")
    ap.add_argument("--responses", default="/tmp/ifeval_responses")
    ap.add_argument("--out", default="/tmp/ifeval_agreement_responses.jsonl")
    a = ap.parse_args()
    prompts = [json.loads(line) for line in open(a.input, encoding="utf-8") if line.strip()]
    by_text = {p["prompt"]: p for p in prompts}
    rows = []
    for path in sorted(glob.glob(os.path.join(a.responses, "*.jsonl"))):
        name = os.path.basename(path)
        for line in open(path, encoding="utf-8"):
            if not line.strip():
                continue
            r = json.loads(line)
            p = by_text.get(r.get("prompt"))
            if p is not None and isinstance(r.get("response"), str):
                rows.append({"key": p["key"], "source": "model:" + name, "response": r["response"]})
    for idx, p in enumerate(prompts):
        rng = random.Random(p["key"])
        rows.append({"key": p["key"], "source": "edge:attempt", "response": attempt(p, rng)})
        rows.append({"key": p["key"], "source": "edge:off_by_one", "response": attempt(p, rng, True)})
        rows.append({"key": p["key"], "source": "edge:stress", "response": stress(p, rng, idx)})
        if idx % 2 == 0:
            rows.append({"key": p["key"], "source": "edge:special", "response": special(p, rng, idx // 2)})
    with open(a.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"ifeval_fixture: {len(rows)} responses ({sum(r['source'].startswith('model:') for r in rows)} from models) -> {a.out}")


if __name__ == "__main__":
    main()
