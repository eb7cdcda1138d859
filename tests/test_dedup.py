"""Dedup on what real rows hold: any character (NUL included), scripts written without spaces, tool calls."""

from __future__ import annotations

import pytest

from engine.data.dedup import dedup, minhash, near_clusters
from engine.data.load import Example

# ~270-character answers: two on one topic (sleep) per script, written for these tests (and for the
# edit-recall figure of benchmarks/bench_data.py).
EN_A = ("To sleep better, keep a regular schedule: go to bed and get up at the same time every day, even at weekends. "
        "Avoid screens for an hour before bed, because their blue light delays melatonin. Keep the bedroom quiet, "
        "dark and cool, and have no coffee after lunch.")
EN_B = ("Getting more sunlight and exercise during the day makes it easier to fall asleep at night. Keep naps under "
        "thirty minutes, take a warm shower and stretch for a few minutes before bed, and use the bed only for "
        "sleep. If insomnia lasts for weeks, see a doctor.")
ZH_A = ("要改善睡眠质量，首先要保持规律的作息时间，每天尽量在同一时间上床和起床，即使在周末也不要相差太多。其次，睡前一小时应避免使用手机和电脑，"
        "因为屏幕发出的蓝光会抑制褪黑素的分泌，让人更难入睡。卧室的环境也很重要，温度最好保持在十八到二十二摄氏度之间，并尽量保持安静和黑暗。"
        "下午以后要少喝咖啡、浓茶等含有咖啡因的饮料，晚餐也不宜吃得过饱。适量的运动有助于睡眠，但剧烈运动最好安排在睡前三小时以前。"
        "如果躺在床上二十分钟仍然睡不着，可以起身做些放松的事情，例如阅读或听轻音乐，等有困意时再回到床上。长期失眠的人应该及时就医，在医生的指导下进行治疗。")
ZH_B = ("想要睡得更好，可以从生活习惯入手。第一，白天多晒太阳，适当进行散步、慢跑或游泳等有氧运动，这样晚上更容易产生睡意。第二，建立固定的睡前程序，"
        "比如洗个热水澡、做几分钟深呼吸或简单的拉伸，让身体知道该休息了。第三，控制午睡时间，午睡不要超过三十分钟，否则会影响夜间的睡眠。"
        "第四，不要把工作带到床上，床只用来睡觉，这样大脑会把床和睡眠联系起来。第五，睡前不要大量饮水，以免夜里频繁起夜。此外，焦虑和压力也是失眠的常见原因，"
        "可以通过写日记、冥想等方式来缓解情绪。如果这些方法都没有效果，建议去医院的睡眠门诊做进一步检查。")
JA_A = ("睡眠の質を高めるためには、まず毎日同じ時間に寝て同じ時間に起きることが大切です。休日でも起きる時間を大きく変えないようにしましょう。"
        "寝る一時間前にはスマートフォンやパソコンの画面を見ないようにしてください。画面の青い光は眠りを助けるホルモンの分泌を妨げます。"
        "寝室は静かで暗く、涼しい状態に保つのが理想的です。午後はコーヒーや緑茶などカフェインを含む飲み物を控え、夕食は寝る三時間前までに済ませるとよいでしょう。")
JA_B = ("ぐっすり眠るためには、昼間の過ごし方も重要です。朝起きたらカーテンを開けて日光を浴び、体内時計をリセットしましょう。"
        "日中に散歩や軽いジョギングなどの運動をすると、夜に自然な眠気が訪れます。昼寝をする場合は三十分以内にとどめ、夕方以降は横にならないようにします。"
        "寝る前にぬるめのお風呂に入ったり、ストレッチをしたりしてリラックスするのも効果的です。それでも眠れない日が続く場合は、専門の医療機関に相談してください。")
TH_A = ("การนอนหลับที่ดีเริ่มต้นจากการเข้านอนและตื่นนอนให้เป็นเวลาเดียวกันทุกวัน "
        "แม้ในวันหยุดก็ไม่ควรเปลี่ยนเวลามากเกินไป "
        "ควรหลีกเลี่ยงการใช้โทรศัพท์มือถือและคอมพิวเตอร์ก่อนนอนอย่างน้อยหนึ่งชั่วโมง "
        "เพราะแสงสีฟ้าจากหน้าจอจะรบกวนการหลั่งฮอร์โมนที่ช่วยให้นอนหลับ ห้องนอนควรเงียบ มืด "
        "และมีอุณหภูมิที่เย็นสบาย "
        "นอกจากนี้ควรงดดื่มกาแฟหรือชาในช่วงบ่ายและไม่ควรรับประทานอาหารมื้อเย็นมากเกินไป")
TH_B = ("หากต้องการนอนหลับให้สนิทมากขึ้น ควรออกกำลังกายเป็นประจำ เช่น เดินเร็ว วิ่งเหยาะ "
        "หรือว่ายน้ำ แต่ไม่ควรออกกำลังกายหนักก่อนนอนสามชั่วโมง การอาบน้ำอุ่นและการหายใจลึก ๆ "
        "ก่อนเข้านอนจะช่วยให้ร่างกายผ่อนคลาย ไม่ควรงีบหลับตอนกลางวันนานเกินสามสิบนาที "
        "และควรใช้เตียงสำหรับการนอนเท่านั้น ถ้ามีปัญหานอนไม่หลับติดต่อกันเป็นเวลานาน "
        "ควรปรึกษาแพทย์ผู้เชี่ยวชาญ")
KO_A = ("잠을 잘 자려면 먼저 매일 같은 시간에 잠자리에 들고 같은 시간에 일어나는 것이 중요합니다. 주말에도 기상 시간을 크게 바꾸지 않는 것이 좋습니다. 잠들기 한 시간 전에는 "
        "스마트폰이나 컴퓨터 화면을 보지 않도록 하세요. 화면에서 나오는 푸른 빛은 수면을 돕는 호르몬의 분비를 방해합니다. 침실은 조용하고 어둡고 서늘하게 유지하는 것이 "
        "이상적입니다. 오후에는 커피나 녹차처럼 카페인이 들어 있는 음료를 피하고, 저녁 식사는 잠들기 세 시간 전까지 마치는 것이 좋습니다.")
KO_B = ("숙면을 위해서는 낮 동안의 생활도 중요합니다. 아침에 일어나면 커튼을 열고 햇빛을 쬐어 몸의 시계를 맞추세요. 낮에 산책이나 가벼운 조깅 같은 운동을 하면 밤에 자연스럽게 "
        "졸음이 옵니다. 낮잠은 삼십 분을 넘기지 않는 것이 좋고, 저녁 이후에는 눕지 않도록 합니다. 자기 전에 미지근한 물로 목욕하거나 스트레칭을 하면 긴장이 풀립니다. 그래도 "
        "잠들지 못하는 날이 계속되면 전문 의료 기관에 상담하세요.")
# Chinese prose around English code, as programming answers are written
MIXED_A = ("在 Python 中读取 CSV 文件最简单的方法是使用 pandas 库。首先用 pip install pandas 安装它，然后在代码里写 import pandas as pd，"
           "再调用 df = pd.read_csv(\"data.csv\") 就能得到一个数据框。读取之后可以用 df.head() 查看前五行，用 df.info() 查看每一列的类型和缺失值。"
           "如果文件使用分号分隔，可以传入 sep=\";\" 参数；如果文件很大，可以设置 chunksize 分块读取，避免一次占用太多内存。")
MIXED_B = ("要把数据框保存为 Excel 文件，可以使用 pandas 的 to_excel 方法。先安装 openpyxl：pip install openpyxl，然后写 "
           "df.to_excel(\"out.xlsx\", index=False)。参数 index=False 表示不保存行索引。如果需要在一个文件里写多个工作表，可以用 "
           "with pd.ExcelWriter(\"out.xlsx\") as writer: 的写法，在里面分别调用 df1.to_excel(writer, sheet_name=\"a\") 和 "
           "df2.to_excel(writer, sheet_name=\"b\")。")


def one_character_changed(text: str, old: str, new: str) -> str:
    assert text.count(old) >= 1 and len(old) == len(new)
    return text.replace(old, new, 1)


@pytest.mark.parametrize("a, edited, b", [
    (EN_A, one_character_changed(EN_A, "coffee", "toffee"), EN_B),
    (ZH_A, one_character_changed(ZH_A, "咖啡因", "咖啡碱"), ZH_B),  # 269 characters, one changed
    (JA_A, one_character_changed(JA_A, "青い光", "白い光"), JA_B),
    (TH_A, one_character_changed(TH_A, "กาแฟหรือชา", "กาแฟหรือยา"), TH_B),  # tea to medicine
    (KO_A, one_character_changed(KO_A, "녹차", "홍차"), KO_B),  # Hangul is written with spaces: word shingles
    (MIXED_A, one_character_changed(MIXED_A, "前五行", "前十行"), MIXED_B),
], ids=["english", "chinese", "japanese", "thai", "korean", "chinese-with-code"])
def test_near_dedup_finds_a_one_character_edit_in_every_script_and_not_a_different_answer(a, edited, b):
    assert near_clusters([a, edited, b]).groups == [[0, 1]]  # the default threshold, 0.8
    assert near_clusters([a, b], 0.3).groups == []  # one topic, different answers: far below even 0.3


def test_a_nul_inside_a_row_does_not_shift_the_rows_after_it():
    first = ("the quick brown fox jumps over the lazy dog near the river bank early this morning in the rain, "
             "then runs up the hill past the old mill and the church before the farmer wakes and lets the hens out")
    second = ("tables and indexes make a database fast when the queries only read the columns they need, and a "
              "covering index answers a query from the index alone without touching the table rows at all")
    texts = [first, "a row with a nul\x00inside it, as scraped web text sometimes has", second,
             first + " again", second + " too"]
    expected = [[0, 3], [2, 4]]
    assert near_clusters(texts).groups == expected
    assert near_clusters([t.replace("\x00", " ") for t in texts]).groups == expected
    examples = [Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": t}], "m", i + 1)
                for i, t in enumerate(texts)]
    assert dedup(examples)["near"].groups == expected


def test_a_word_at_the_end_of_one_row_does_not_run_on_into_the_next():
    sig, has = minhash(["the cat sat", "on the mat", "the cat sat"])  # no separator between rows any more
    assert has.all() and (sig[0] == sig[2]).all()


def test_near_dedup_of_examples_too_short_to_shingle_finds_no_near_duplicates_and_does_not_crash():
    assert near_clusters(["yes", "no", "yes", "好的"]).groups == []  # exact dedup is what finds these


def weather(arguments, call_id="call_1", reasoning=None) -> Example:
    call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    assistant = {"role": "assistant", "content": "", "tool_calls": [call]}
    if reasoning:
        assistant["reasoning_content"] = reasoning
    return Example([{"role": "user", "content": "What is the weather like where I am going?"}, assistant,
                    {"role": "tool", "tool_call_id": call_id, "content": "18 C, light rain"},
                    {"role": "assistant", "content": "It is 18 C with light rain: take an umbrella."}], "m", 1)


def test_examples_that_differ_only_in_a_tool_call_are_not_duplicates():
    # (near-duplicates they may be: the rest of the conversation is the same)
    found = dedup([weather('{"city": "Paris", "unit": "C"}'), weather('{"city": "Lyon", "unit": "C"}')], None)
    assert found["exact"].groups == []
    found = dedup([weather({"city": "Paris", "unit": "C"}), weather({"unit": "C", "city": "Lyon"})], None)
    assert found["exact"].groups == []
    renamed = weather('{"city": "Paris", "unit": "C"}')
    renamed.messages[1]["tool_calls"][0]["function"]["name"] = "get_forecast"
    assert dedup([weather('{"city": "Paris", "unit": "C"}'), renamed], None)["exact"].groups == []


def test_identical_tool_calls_are_duplicates_whatever_their_ids_key_order_and_spacing():
    found = dedup([weather({"city": "Paris", "unit": "C"}), weather({"unit": "C", "city": "Paris"}, "call_9"),
                   weather('{"unit":"C","city":"Paris"}', "call_3")])
    assert found["exact"].groups == [[0, 1, 2]]  # OpenAI's JSON text and a parsed object are the same call


def test_the_reasoning_is_part_of_the_example():
    examples = [weather("{}", reasoning="The user is going to Paris, so ask for Paris."),
                weather("{}", reasoning="The user did not say where; ask for the current location.")]
    assert dedup(examples, None)["exact"].groups == []
    assert dedup([*examples, examples[0]], None)["exact"].groups == [[0, 2]]
