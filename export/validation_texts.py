"""Multilingual texts used to validate every exported graph against PyTorch.

Fifteen languages in eleven scripts (Latin, Cyrillic, Arabic, Hangul, Devanagari, Bengali, Telugu, Han...),
each with a short, a one-sentence and a paragraph-long text (long enough to be truncated at small
``max_length`` values), so validation covers many token patterns and sequence lengths.
"""

from __future__ import annotations

VALIDATION_TEXTS: dict[str, tuple[str, str, str]] = {
    "en": (
        "Good morning.",
        "The library opens at nine and closes at six on weekdays.",
        (
            "Rivers shape the land over thousands of years. They carry sand and stones from the mountains to "
            "the sea, carve valleys, and build wide plains where farmers grow rice and wheat. Many of the "
            "oldest cities in the world were founded on their banks, because water meant food, trade and "
            "travel."
        ),
    ),
    "es": (
        "Buenos días.",
        "La biblioteca abre a las nueve y cierra a las seis entre semana.",
        (
            "Los ríos dan forma a la tierra durante miles de años. Llevan arena y piedras desde las montañas "
            "hasta el mar, excavan valles y construyen amplias llanuras donde los agricultores cultivan "
            "arroz y trigo. Muchas de las ciudades más antiguas del mundo se fundaron en sus orillas, porque "
            "el agua significaba comida, comercio y viajes."
        ),
    ),
    "ru": (
        "Доброе утро.",
        "Библиотека открывается в девять и закрывается в шесть по будням.",
        (
            "Реки формируют землю на протяжении тысяч лет. Они несут песок и камни с гор к морю, прорезают "
            "долины и создают широкие равнины, где фермеры выращивают рис и пшеницу. Многие древнейшие "
            "города мира были основаны на их берегах, потому что вода означала пищу, торговлю и путешествия."
        ),
    ),
    "fr": (
        "Bonjour.",
        "La bibliothèque ouvre à neuf heures et ferme à dix-huit heures en semaine.",
        (
            "Les fleuves façonnent la terre pendant des milliers d'années. Ils transportent du sable et des "
            "pierres des montagnes jusqu'à la mer, creusent des vallées et forment de larges plaines où les "
            "agriculteurs cultivent le riz et le blé. Beaucoup des plus anciennes villes du monde ont été "
            "fondées sur leurs rives, car l'eau signifiait nourriture, commerce et voyages."
        ),
    ),
    "vi": (
        "Chào buổi sáng.",
        "Thư viện mở cửa lúc chín giờ và đóng cửa lúc sáu giờ vào các ngày trong tuần.",
        (
            "Những dòng sông định hình mặt đất qua hàng nghìn năm. Chúng mang cát và đá từ núi ra biển, "
            "khoét sâu các thung lũng và bồi đắp nên những đồng bằng rộng lớn, nơi nông dân trồng lúa và lúa "
            "mì. Nhiều thành phố cổ nhất thế giới được xây dựng bên bờ sông, vì nước có nghĩa là lương thực, "
            "buôn bán và đi lại."
        ),
    ),
    "fa": (
        "صبح بخیر.",
        "کتابخانه در روزهای کاری ساعت نه باز و ساعت شش بسته می‌شود.",
        (
            "رودخانه‌ها در طول هزاران سال به زمین شکل می‌دهند. آن‌ها شن و سنگ را از کوه‌ها به دریا می‌برند، "
            "دره‌ها را می‌کنند و دشت‌های پهناوری می‌سازند که کشاورزان در آن برنج و گندم می‌کارند. بسیاری از "
            "کهن‌ترین شهرهای جهان در کنار رودخانه‌ها بنا شدند، زیرا آب به معنای غذا، تجارت و سفر بود."
        ),
    ),
    "id": (
        "Selamat pagi.",
        "Perpustakaan buka pukul sembilan dan tutup pukul enam pada hari kerja.",
        (
            "Sungai membentuk daratan selama ribuan tahun. Sungai membawa pasir dan batu dari pegunungan ke "
            "laut, mengukir lembah, dan membangun dataran luas tempat petani menanam padi dan gandum. Banyak "
            "kota tertua di dunia didirikan di tepiannya, karena air berarti makanan, perdagangan, dan "
            "perjalanan."
        ),
    ),
    "ar": (
        "صباح الخير.",
        "تفتح المكتبة في الساعة التاسعة وتغلق في الساعة السادسة خلال أيام الأسبوع.",
        (
            "تشكّل الأنهار الأرض على مدى آلاف السنين. فهي تحمل الرمال والحجارة من الجبال إلى البحر، وتحفر "
            "الوديان، وتبني سهولاً واسعة يزرع فيها المزارعون الأرز والقمح. وقد تأسست كثير من أقدم مدن العالم "
            "على ضفافها، لأن الماء كان يعني الطعام والتجارة والسفر."
        ),
    ),
    "fi": (
        "Hyvää huomenta.",
        "Kirjasto aukeaa arkisin kello yhdeksän ja sulkeutuu kello kuusi.",
        (
            "Joet muovaavat maata tuhansien vuosien ajan. Ne kuljettavat hiekkaa ja kiviä vuorilta mereen, "
            "kaivertavat laaksoja ja rakentavat laajoja tasankoja, joilla maanviljelijät kasvattavat riisiä "
            "ja vehnää. Monet maailman vanhimmista kaupungeista perustettiin jokien rannoille, koska vesi "
            "merkitsi ruokaa, kauppaa ja matkustamista."
        ),
    ),
    "ko": (
        "좋은 아침입니다.",
        "도서관은 평일에 아홉 시에 문을 열고 여섯 시에 닫습니다.",
        (
            "강은 수천 년에 걸쳐 땅의 모양을 만든다. 강은 산에서 바다로 모래와 돌을 실어 나르고, 계곡을 깎아 내며, 농부들이 쌀과 밀을 기르는 넓은 평야를 만든다. 세계에서 가장 "
            "오래된 도시들 중 상당수가 강가에 세워졌는데, 물은 곧 식량과 무역과 여행을 뜻했기 때문이다."
        ),
    ),
    "hi": (
        "सुप्रभात।",
        "पुस्तकालय कार्यदिवसों में नौ बजे खुलता है और छह बजे बंद होता है।",
        (
            "नदियाँ हज़ारों वर्षों में धरती को आकार देती हैं। वे पहाड़ों से समुद्र तक रेत और पत्थर ले जाती "
            "हैं, घाटियाँ काटती हैं और चौड़े मैदान बनाती हैं जहाँ किसान चावल और गेहूँ उगाते हैं। दुनिया के "
            "कई सबसे पुराने शहर उनके किनारों पर बसाए गए, क्योंकि पानी का अर्थ था भोजन, व्यापार और यात्रा।"
        ),
    ),
    "bn": (
        "সুপ্রভাত।",
        "গ্রন্থাগারটি কর্মদিবসে নয়টায় খোলে এবং ছয়টায় বন্ধ হয়।",
        (
            "নদী হাজার হাজার বছর ধরে ভূমির আকার গড়ে তোলে। নদী পাহাড় থেকে সমুদ্রে বালি ও পাথর বয়ে নিয়ে "
            "যায়, উপত্যকা খোদাই করে এবং বিস্তীর্ণ সমভূমি তৈরি করে যেখানে কৃষকেরা ধান ও গম চাষ করেন। পৃথিবীর "
            "প্রাচীনতম শহরগুলোর অনেকগুলোই নদীর তীরে গড়ে উঠেছিল, কারণ পানি মানে ছিল খাদ্য, বাণিজ্য ও "
            "যাতায়াত।"
        ),
    ),
    "te": (
        "శుభోదయం.",
        "గ్రంథాలయం పని దినాల్లో తొమ్మిది గంటలకు తెరుచుకుని ఆరు గంటలకు మూసివేయబడుతుంది.",
        (
            "నదులు వేల సంవత్సరాలుగా భూమిని తీర్చిదిద్దుతాయి. అవి పర్వతాల నుండి సముద్రం వరకు ఇసుక, రాళ్లను "
            "మోసుకెళ్తాయి, లోయలను చెక్కుతాయి, రైతులు వరి మరియు గోధుమలు పండించే విశాలమైన మైదానాలను "
            "ఏర్పరుస్తాయి. ప్రపంచంలోని అనేక ప్రాచీన నగరాలు నదీ తీరాలలోనే వెలిశాయి, ఎందుకంటే నీరు అంటే ఆహారం, "
            "వ్యాపారం, ప్రయాణం."
        ),
    ),
    "sw": (
        "Habari za asubuhi.",
        "Maktaba hufunguliwa saa tatu asubuhi na kufungwa saa kumi na mbili jioni siku za kazi.",
        (
            "Mito huunda ardhi kwa maelfu ya miaka. Hubeba mchanga na mawe kutoka milimani hadi baharini, "
            "huchonga mabonde, na hujenga tambarare pana ambapo wakulima hulima mpunga na ngano. Miji mingi "
            "ya kale zaidi duniani ilijengwa kando ya kingo zake, kwa sababu maji yalimaanisha chakula, "
            "biashara na usafiri."
        ),
    ),
    "zh": (
        "早上好。",
        "图书馆工作日上午九点开门，下午六点关门。",
        "河流在数千年间塑造着大地。它们把沙子和石头从山上带到大海，切割出山谷，并冲积出广阔的平原，农民在那里种植水稻和小麦。世界上许多最古老的城市都建在河岸边，因为水意味着食物、贸易和交通。",
    ),
}

LANGUAGES: tuple[str, ...] = tuple(VALIDATION_TEXTS)


def validation_items() -> list[tuple[str, str]]:
    """All ``(language, text)`` pairs, interleaved so that batches mix languages and lengths."""
    items: list[tuple[str, str]] = []
    for length_index in range(3):
        for offset, lang in enumerate(LANGUAGES):
            items.append((lang, VALIDATION_TEXTS[lang][(length_index + offset) % 3]))
    return items
