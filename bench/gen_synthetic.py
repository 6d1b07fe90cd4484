"""Deterministic synthetic data for the search benchmark: an Indian hospital's Patients, Practitioners,
Encounters and Observations, with ids chosen here (uuid) so every reference is known in advance.

    from gen_synthetic import Generator
    g = Generator(patients=100_000, observations_per_patient=10, seed=42)
    for resource in g.resources(): ...        # streamed: practitioners, then patient by patient
    info = g.patient_info(1234)               # what was generated for patient 1234 (no resources built)

    python bench/gen_synthetic.py --patients 3 --observations-per-patient 4 > sample.ndjson

Everything about patient ``i`` comes from its own RNG (``Random(f"{seed}:patient:{i}")``), so any
patient's data can be re-created alone (the benchmark draws its search parameters that way, without
reading the database). Per patient: 1–3 Encounters (status mostly finished), exactly
``observations_per_patient`` Observations spread over them, LOINC codes drawn from ``LOINC`` (~300
codes, Zipf-like: vitals and common labs often, the tail rarely), valueQuantity in UCUM.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

MRN_SYSTEM = "https://hospital.example.in/fhir/sid/mrn"
ABHA_SYSTEM = "https://healthid.abdm.gov.in"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

FAMILY = [
    "Sharma", "Verma", "Gupta", "Agarwal", "Patel", "Shah", "Mehta", "Desai", "Joshi", "Kulkarni", "Deshpande",
    "Patil", "Pawar", "Jadhav", "Shinde", "Iyer", "Iyengar", "Nair", "Menon", "Pillai", "Kurup", "Panicker",
    "Reddy", "Rao", "Naidu", "Chowdary", "Raju", "Krishnan", "Subramanian", "Venkatesan", "Ramasamy",
    "Murugan", "Pandian", "Gounder", "Mudaliar", "Chettiar", "Banerjee", "Chatterjee", "Mukherjee",
    "Bhattacharya", "Ganguly", "Bose", "Das", "Dutta", "Ghosh", "Sen", "Roy", "Saha", "Mondal", "Singh",
    "Kaur", "Gill", "Sandhu", "Dhillon", "Grewal", "Khan", "Ansari", "Qureshi", "Siddiqui", "Sheikh", "Syed",
    "Mirza", "Hussain", "Yadav", "Mishra", "Tiwari", "Pandey", "Dubey", "Shukla", "Tripathi", "Chauhan",
    "Rathore", "Thakur", "Bhat", "Hegde", "Shetty", "Kamath", "Pai", "Prabhu", "Gowda", "D'Souza",
    "Fernandes", "Pereira", "Rodrigues", "Thomas", "Mathew", "Varghese", "Kurian", "Jacob", "Abraham",
    "Saxena", "Srivastava", "Kapoor", "Malhotra", "Khanna", "Bajaj", "Arora", "Sethi", "Bhatia", "Chopra",
    "Mahajan", "Goswami", "Barua", "Kalita", "Bora", "Sahu", "Mohanty", "Patnaik", "Behera", "Swain",
]
GIVEN_M = [
    "Aarav", "Vivaan", "Aditya", "Arjun", "Sai", "Reyansh", "Krishna", "Ishaan", "Rohan", "Rahul", "Amit",
    "Suresh", "Ramesh", "Rajesh", "Mahesh", "Ganesh", "Vikram", "Sanjay", "Anil", "Sunil", "Manoj", "Deepak",
    "Prakash", "Venkatesh", "Srinivas", "Karthik", "Arun", "Vijay", "Ravi", "Gopal", "Harish", "Naveen",
    "Mohammed", "Imran", "Faisal", "Irfan", "Salman", "Gurpreet", "Harpreet", "Manpreet", "Joseph", "George",
    "Thomas", "Abhishek", "Akash", "Nikhil", "Pranav", "Siddharth", "Kabir", "Dhruv", "Yash", "Om",
    "Balaji", "Murali", "Senthil", "Prabhakar", "Subhash", "Debashis", "Sourav", "Anirban", "Partha",
]
GIVEN_F = [
    "Saanvi", "Aanya", "Aadhya", "Ananya", "Diya", "Pari", "Anika", "Navya", "Myra", "Sara", "Priya",
    "Pooja", "Neha", "Sneha", "Kavya", "Divya", "Lakshmi", "Meera", "Radha", "Sita", "Geeta", "Sunita",
    "Anita", "Kavita", "Rekha", "Asha", "Usha", "Lata", "Shobha", "Padma", "Revathi", "Kalpana",
    "Bhavani", "Deepa", "Shalini", "Nandini", "Aishwarya", "Fatima", "Ayesha", "Zainab", "Nazia", "Simran",
    "Harleen", "Jaspreet", "Mary", "Elizabeth", "Anjali", "Ritu", "Swati", "Preeti", "Shruti", "Ishita",
    "Tanvi", "Riya", "Vaishnavi", "Keerthi", "Malathi", "Sumathi", "Moumita", "Sreya", "Tanushree",
]
CITIES = [  # city, district, state, PIN prefix
    ("Mumbai", "Mumbai", "Maharashtra", "400"), ("Pune", "Pune", "Maharashtra", "411"),
    ("Nagpur", "Nagpur", "Maharashtra", "440"), ("Delhi", "New Delhi", "Delhi", "110"),
    ("Bengaluru", "Bengaluru Urban", "Karnataka", "560"), ("Mysuru", "Mysuru", "Karnataka", "570"),
    ("Chennai", "Chennai", "Tamil Nadu", "600"), ("Coimbatore", "Coimbatore", "Tamil Nadu", "641"),
    ("Madurai", "Madurai", "Tamil Nadu", "625"), ("Hyderabad", "Hyderabad", "Telangana", "500"),
    ("Vijayawada", "Krishna", "Andhra Pradesh", "520"), ("Kochi", "Ernakulam", "Kerala", "682"),
    ("Thiruvananthapuram", "Thiruvananthapuram", "Kerala", "695"), ("Kolkata", "Kolkata", "West Bengal", "700"),
    ("Ahmedabad", "Ahmedabad", "Gujarat", "380"), ("Surat", "Surat", "Gujarat", "395"),
    ("Jaipur", "Jaipur", "Rajasthan", "302"), ("Lucknow", "Lucknow", "Uttar Pradesh", "226"),
    ("Patna", "Patna", "Bihar", "800"), ("Bhubaneswar", "Khordha", "Odisha", "751"),
    ("Guwahati", "Kamrup Metropolitan", "Assam", "781"), ("Chandigarh", "Chandigarh", "Chandigarh", "160"),
    ("Bhopal", "Bhopal", "Madhya Pradesh", "462"), ("Indore", "Indore", "Madhya Pradesh", "452"),
]
STREETS = ["MG Road", "Station Road", "Gandhi Nagar", "Nehru Street", "Temple Street", "Main Road", "Park Street",
           "Lake View Road", "Ring Road", "Market Road", "Church Street", "College Road", "Anna Salai", "Link Road"]
SPECIALTIES = ["General Medicine", "Cardiology", "Endocrinology", "Nephrology", "Paediatrics", "Obstetrics",
               "Orthopaedics", "Pulmonology", "General Surgery", "Emergency Medicine", "Oncology", "Neurology"]

# LOINC code | display | UCUM unit | typical low | typical high. The first 13 are vital signs; the
# order is the popularity order of the Zipf draw (vitals and the common panels first).
_LOINC_TABLE = """
8867-4|Heart rate|/min|55|120
8480-6|Systolic blood pressure|mm[Hg]|95|180
8462-4|Diastolic blood pressure|mm[Hg]|55|110
8310-5|Body temperature|Cel|36|39.5
9279-1|Respiratory rate|/min|12|28
59408-5|Oxygen saturation in Arterial blood by Pulse oximetry|%|88|100
29463-7|Body weight|kg|3|110
8302-2|Body height|cm|50|185
39156-5|Body mass index (BMI) [Ratio]|kg/m2|15|38
8287-5|Head Occipital-frontal circumference by Tape measure|cm|32|56
2708-6|Oxygen saturation in Arterial blood|%|88|100
8306-3|Body height --lying|cm|45|100
8478-0|Mean blood pressure|mm[Hg]|65|120
2345-7|Glucose [Mass/volume] in Serum or Plasma|mg/dL|70|300
718-7|Hemoglobin [Mass/volume] in Blood|g/dL|7|17
4548-4|Hemoglobin A1c/Hemoglobin.total in Blood|%|4.5|12
2160-0|Creatinine [Mass/volume] in Serum or Plasma|mg/dL|0.5|4
6690-2|Leukocytes [#/volume] in Blood by Automated count|10*3/uL|3|18
777-3|Platelets [#/volume] in Blood by Automated count|10*3/uL|80|450
2951-2|Sodium [Moles/volume] in Serum or Plasma|mmol/L|128|148
2823-3|Potassium [Moles/volume] in Serum or Plasma|mmol/L|3|5.8
3094-0|Urea nitrogen [Mass/volume] in Serum or Plasma|mg/dL|7|60
2093-3|Cholesterol [Mass/volume] in Serum or Plasma|mg/dL|120|300
2571-8|Triglyceride [Mass/volume] in Serum or Plasma|mg/dL|60|450
2085-9|Cholesterol in HDL [Mass/volume] in Serum or Plasma|mg/dL|25|80
18262-6|Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay|mg/dL|50|200
1742-6|Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma|U/L|8|200
1920-8|Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma|U/L|8|200
6768-6|Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma|U/L|40|300
1975-2|Bilirubin.total [Mass/volume] in Serum or Plasma|mg/dL|0.2|5
1751-7|Albumin [Mass/volume] in Serum or Plasma|g/dL|2.5|5.2
2885-2|Protein [Mass/volume] in Serum or Plasma|g/dL|5.5|8.5
4544-3|Hematocrit [Volume Fraction] of Blood by Automated count|%|25|52
789-8|Erythrocytes [#/volume] in Blood by Automated count|10*6/uL|3|6
787-2|MCV [Entitic volume] by Automated count|fL|65|105
785-6|MCH [Entitic mass] by Automated count|pg|20|35
786-4|MCHC [Mass/volume] by Automated count|g/dL|30|36
2075-0|Chloride [Moles/volume] in Serum or Plasma|mmol/L|95|110
2028-9|Carbon dioxide, total [Moles/volume] in Serum or Plasma|mmol/L|18|30
17861-6|Calcium [Mass/volume] in Serum or Plasma|mg/dL|7.5|11
3016-3|Thyrotropin [Units/volume] in Serum or Plasma|m[IU]/L|0.2|12
3024-7|Thyroxine (T4) free [Mass/volume] in Serum or Plasma|ng/dL|0.6|2.2
3051-0|Triiodothyronine (T3) Free [Mass/volume] in Serum or Plasma|pg/mL|2|5
33914-3|Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum or Plasma by Creatinine-based formula (MDRD)|mL/min/{1.73_m2}|10|130
14959-1|Microalbumin/Creatinine [Mass Ratio] in Urine|mg/g|2|300
1988-5|C reactive protein [Mass/volume] in Serum or Plasma|mg/L|0.5|150
30522-7|C reactive protein [Mass/volume] in Serum or Plasma by High sensitivity method|mg/L|0.2|10
4537-7|Erythrocyte sedimentation rate by Westergren method|mm/h|2|90
5902-2|Prothrombin time (PT)|s|10|30
6301-6|INR in Platelet poor plasma by Coagulation assay|{INR}|0.8|4
3173-2|aPTT in Blood by Coagulation assay|s|25|60
2276-4|Ferritin [Mass/volume] in Serum or Plasma|ng/mL|10|900
2498-4|Iron [Mass/volume] in Serum or Plasma|ug/dL|30|200
2132-9|Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma|pg/mL|150|1200
1989-3|Calcidiol [Mass/volume] in Serum or Plasma|ng/mL|5|80
2284-8|Folate [Mass/volume] in Serum or Plasma|ng/mL|2|20
3084-1|Urate [Mass/volume] in Serum or Plasma|mg/dL|2.5|10
2777-1|Phosphate [Mass/volume] in Serum or Plasma|mg/dL|2|6
19123-9|Magnesium [Mass/volume] in Serum or Plasma|mg/dL|1.4|3
2532-0|Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma|U/L|100|600
2157-6|Creatine kinase [Enzymatic activity/volume] in Serum or Plasma|U/L|30|1000
10839-9|Troponin I.cardiac [Mass/volume] in Serum or Plasma|ng/mL|0|5
6598-7|Troponin T.cardiac [Mass/volume] in Serum or Plasma|ug/L|0|2
33762-6|Natriuretic peptide.B prohormone N-Terminal [Mass/volume] in Serum or Plasma|pg/mL|20|5000
30934-4|Natriuretic peptide B [Mass/volume] in Serum or Plasma|pg/mL|5|2000
1558-6|Fasting glucose [Mass/volume] in Serum or Plasma|mg/dL|70|250
1521-4|Glucose [Mass/volume] in Serum or Plasma --2 hours post meal|mg/dL|90|350
2339-0|Glucose [Mass/volume] in Blood|mg/dL|60|300
41653-7|Glucose [Mass/volume] in Capillary blood by Glucometer|mg/dL|60|400
20570-8|Hematocrit [Volume Fraction] of Blood|%|25|52
26515-7|Platelets [#/volume] in Blood|10*3/uL|80|450
26464-8|Leukocytes [#/volume] in Blood|10*3/uL|3|18
26453-1|Erythrocytes [#/volume] in Blood|10*6/uL|3|6
770-8|Neutrophils/100 leukocytes in Blood by Automated count|%|40|85
736-9|Lymphocytes/100 leukocytes in Blood by Automated count|%|10|45
5905-5|Monocytes/100 leukocytes in Blood by Automated count|%|2|12
713-8|Eosinophils/100 leukocytes in Blood by Automated count|%|0|10
706-2|Basophils/100 leukocytes in Blood by Automated count|%|0|2
751-8|Neutrophils [#/volume] in Blood by Automated count|10*3/uL|1.5|12
731-0|Lymphocytes [#/volume] in Blood by Automated count|10*3/uL|0.8|4.5
742-7|Monocytes [#/volume] in Blood by Automated count|10*3/uL|0.1|1.2
711-2|Eosinophils [#/volume] in Blood by Automated count|10*3/uL|0|0.8
704-7|Basophils [#/volume] in Blood by Automated count|10*3/uL|0|0.2
788-0|Erythrocyte distribution width [Ratio] by Automated count|%|11|20
21000-5|Erythrocyte distribution width [Entitic volume] by Automated count|fL|35|60
32623-1|Platelet mean volume [Entitic volume] in Blood by Automated count|fL|7|13
32207-3|Platelet distribution width [Entitic volume] in Blood by Automated count|fL|9|20
4679-7|Reticulocytes/100 erythrocytes in Blood|%|0.5|4
2947-0|Sodium [Moles/volume] in Blood|mmol/L|128|148
6298-4|Potassium [Moles/volume] in Blood|mmol/L|3|5.8
2069-3|Chloride [Moles/volume] in Blood|mmol/L|95|110
20565-8|Carbon dioxide, total [Moles/volume] in Blood|mmol/L|18|30
6299-2|Urea nitrogen [Mass/volume] in Blood|mg/dL|7|60
38483-4|Creatinine [Mass/volume] in Blood|mg/dL|0.5|4
49765-1|Calcium [Mass/volume] in Blood|mg/dL|7.5|11
33037-3|Anion gap in Serum or Plasma|mmol/L|4|20
1963-8|Bicarbonate [Moles/volume] in Serum or Plasma|mmol/L|16|32
2524-7|Lactate [Moles/volume] in Serum or Plasma|mmol/L|0.5|6
2744-1|pH of Arterial blood|[pH]|7.2|7.55
2019-8|Carbon dioxide [Partial pressure] in Arterial blood|mm[Hg]|25|60
2703-7|Oxygen [Partial pressure] in Arterial blood|mm[Hg]|55|120
1960-4|Bicarbonate [Moles/volume] in Arterial blood|mmol/L|16|32
1925-7|Base excess in Arterial blood by calculation|mmol/L|-8|6
10834-0|Globulin [Mass/volume] in Serum by calculation|g/dL|2|4
1759-0|Albumin/Globulin [Mass Ratio] in Serum or Plasma|{ratio}|0.8|2.2
1968-7|Bilirubin.direct [Mass/volume] in Serum or Plasma|mg/dL|0|2
1971-1|Bilirubin.indirect [Mass/volume] in Serum or Plasma|mg/dL|0.1|3
2324-2|Gamma glutamyl transferase [Enzymatic activity/volume] in Serum or Plasma|U/L|8|250
1798-8|Amylase [Enzymatic activity/volume] in Serum or Plasma|U/L|25|300
3040-3|Lipase [Enzymatic activity/volume] in Serum or Plasma|U/L|10|300
2089-1|Cholesterol in LDL [Mass/volume] in Serum or Plasma|mg/dL|50|200
13457-7|Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation|mg/dL|50|200
9830-1|Cholesterol.total/Cholesterol in HDL [Mass Ratio] in Serum or Plasma|{ratio}|2|8
2091-7|Cholesterol in VLDL [Mass/volume] in Serum or Plasma|mg/dL|5|60
43396-1|Cholesterol non HDL [Mass/volume] in Serum or Plasma|mg/dL|80|230
17856-6|Hemoglobin A1c/Hemoglobin.total in Blood by HPLC|%|4.5|12
27353-2|Glucose mean value [Mass/volume] in Blood Estimated from glycated hemoglobin|mg/dL|90|300
2243-4|Estradiol (E2) [Mass/volume] in Serum or Plasma|pg/mL|10|400
2986-8|Testosterone [Mass/volume] in Serum or Plasma|ng/dL|10|900
2842-3|Prolactin [Mass/volume] in Serum or Plasma|ng/mL|2|40
15067-2|Follitropin [Units/volume] in Serum or Plasma|m[IU]/mL|1|100
10501-5|Lutropin [Units/volume] in Serum or Plasma|m[IU]/mL|1|80
2143-6|Cortisol [Mass/volume] in Serum or Plasma|ug/dL|2|25
2731-8|Parathyrin.intact [Mass/volume] in Serum or Plasma|pg/mL|10|150
2857-1|Prostate specific Ag [Mass/volume] in Serum or Plasma|ng/mL|0.1|20
2039-6|Carcinoembryonic Ag [Mass/volume] in Serum or Plasma|ng/mL|0.5|30
10334-1|Cancer Ag 125 [Units/volume] in Serum or Plasma|[IU]/mL|5|300
24108-3|Cancer Ag 19-9 [Units/volume] in Serum or Plasma|[IU]/mL|2|200
1834-1|Alpha-1-Fetoprotein [Mass/volume] in Serum or Plasma|ng/mL|1|50
19880-4|Choriogonadotropin.beta subunit [Units/volume] in Serum or Plasma|m[IU]/mL|0|50000
5811-5|Specific gravity of Urine by Test strip|{SG}|1.003|1.035
5803-2|pH of Urine by Test strip|[pH]|4.5|8
5804-0|Protein [Mass/volume] in Urine by Test strip|mg/dL|0|300
5792-7|Glucose [Mass/volume] in Urine by Test strip|mg/dL|0|1000
5797-6|Ketones [Mass/volume] in Urine by Test strip|mg/dL|0|80
20505-4|Bilirubin.total [Mass/volume] in Urine by Test strip|mg/dL|0|3
5818-0|Urobilinogen [Mass/volume] in Urine by Test strip|mg/dL|0.1|8
2161-8|Creatinine [Mass/volume] in Urine|mg/dL|20|300
2888-6|Protein [Mass/volume] in Urine|mg/dL|0|300
14957-5|Microalbumin [Mass/volume] in Urine|mg/L|0|300
2889-4|Protein [Mass/time] in 24 hour Urine|mg/(24.h)|20|3000
2955-3|Sodium [Moles/volume] in Urine|mmol/L|20|250
2828-2|Potassium [Moles/volume] in Urine|mmol/L|10|120
3167-4|Volume of 24 hour Urine|mL|500|3500
2965-2|Specific gravity of Urine|{SG}|1.003|1.035
30405-5|Leukocytes [#/volume] in Urine|/uL|0|500
30391-7|Erythrocytes [#/volume] in Urine|/uL|0|200
20454-5|Protein/Creatinine [Mass Ratio] in Urine|mg/mg|0|5
9318-7|Albumin/Creatinine [Mass Ratio] in Urine|mg/g|2|300
57905-2|Hemoglobin.gastrointestinal [Presence] in Stool by Immunologic method|ng/mL|0|400
10230-1|Left ventricular Ejection fraction|%|20|70
8634-8|QT interval corrected|ms|360|520
8625-6|P-R Interval|ms|110|240
8633-0|QRS duration|ms|70|160
19926-5|FEV1/FVC|%|40|90
20150-9|FEV1|L|0.8|4.5
19870-5|Forced vital capacity [Volume] Respiratory system|L|1|5.5
33452-4|Peak expiratory flow rate|L/min|150|650
38265-5|DXA Femur [T-score] Bone density|{T-score}|-4|1
46278-8|Bone density T-score|{T-score}|-4|1
72514-3|Pain severity - 0-10 verbal numeric rating [Score] - Reported|{score}|0|10
72106-8|Total score [MMSE]|{score}|10|30
44261-6|Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]|{score}|0|27
70274-6|Generalized anxiety disorder 7 item (GAD-7) total score [Reported.PHQ]|{score}|0|21
9269-2|Glasgow coma score total|{score}|3|15
56115-9|Waist Circumference by NCFS|cm|55|130
8280-0|Waist Circumference at umbilicus by Tape measure|cm|55|130
9843-4|Head Occipital-frontal circumference|cm|32|58
3141-9|Body weight Measured|kg|3|110
8335-2|Body weight Estimated|kg|3|110
8331-1|Oral temperature|Cel|36|39.5
8332-9|Rectal temperature|Cel|36|40
8328-7|Axillary temperature|Cel|35.5|39
76282-3|Heart rate.beat-to-beat by EKG|/min|50|140
8889-8|Heart rate by Pulse oximetry|/min|50|140
8893-0|Heart rate Peripheral artery by Palpation|/min|50|140
8459-0|Systolic blood pressure--sitting|mm[Hg]|95|180
8453-3|Diastolic blood pressure--sitting|mm[Hg]|55|110
8454-1|Diastolic blood pressure--standing|mm[Hg]|55|110
8460-8|Systolic blood pressure--standing|mm[Hg]|95|180
8455-8|Diastolic blood pressure--supine|mm[Hg]|55|110
8461-6|Systolic blood pressure--supine|mm[Hg]|95|180
19935-6|Maximum expiratory gas flow Respiratory system airway by Peak flow meter|L/min|150|650
3150-0|Inhaled oxygen concentration|%|21|100
3151-8|Inhaled oxygen flow rate|L/min|0|15
19994-3|Oxygen/Inspired gas setting [Volume Fraction] Ventilator|%|21|100
20112-9|Tidal volume setting Ventilator|mL|300|700
19834-1|Breath rate setting Ventilator|/min|10|30
20077-4|Positive end expiratory pressure setting Ventilator|cm[H2O]|5|15
11558-4|pH of Blood|[pH]|7.2|7.55
2026-3|Carbon dioxide [Partial pressure] in Venous blood|mm[Hg]|35|60
2705-2|Oxygen [Partial pressure] in Venous blood|mm[Hg]|25|50
2518-9|Lactate [Moles/volume] in Arterial blood|mmol/L|0.5|8
32693-4|Lactate [Moles/volume] in Blood|mmol/L|0.5|8
2947-0|Sodium [Moles/volume] in Blood|mmol/L|128|148
1994-3|Calcium.ionized [Moles/volume] in Blood|mmol/L|0.9|1.4
17862-4|Calcium [Mass/volume] in Urine|mg/dL|2|30
2601-3|Magnesium [Mass/volume] in Urine|mg/dL|2|20
14682-9|Creatinine [Moles/volume] in Serum or Plasma|umol/L|40|400
14937-7|Urea nitrogen [Moles/volume] in Serum or Plasma|mmol/L|2|25
22664-7|Urea [Mass/volume] in Serum or Plasma|mg/dL|15|130
3091-6|Urea [Mass/volume] in Serum or Plasma|mg/dL|15|130
62238-1|Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI)|mL/min/{1.73_m2}|10|130
48642-3|Glomerular filtration rate/1.73 sq M.predicted among non-blacks [Volume Rate/Area] in Serum, Plasma or Blood|mL/min/{1.73_m2}|10|130
48643-1|Glomerular filtration rate/1.73 sq M.predicted among blacks [Volume Rate/Area] in Serum, Plasma or Blood|mL/min/{1.73_m2}|10|130
15074-8|Glucose [Moles/volume] in Blood|mmol/L|3.5|20
14749-6|Glucose [Moles/volume] in Serum or Plasma|mmol/L|3.5|20
14771-0|Fasting glucose [Moles/volume] in Serum or Plasma|mmol/L|3.5|15
59261-8|Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol|mmol/mol|25|110
20448-7|Insulin [Units/volume] in Serum or Plasma|u[IU]/mL|2|50
1986-9|C peptide [Mass/volume] in Serum or Plasma|ng/mL|0.5|5
14647-2|Cholesterol [Moles/volume] in Serum or Plasma|mmol/L|3|8
14927-8|Triglyceride [Moles/volume] in Serum or Plasma|mmol/L|0.5|5
14646-4|Cholesterol in HDL [Moles/volume] in Serum or Plasma|mmol/L|0.6|2.2
22748-8|Cholesterol in LDL [Moles/volume] in Serum or Plasma|mmol/L|1.2|5.5
1884-6|Apolipoprotein B [Mass/volume] in Serum or Plasma|mg/dL|40|160
10835-7|Lipoprotein a [Mass/volume] in Serum or Plasma|mg/dL|2|120
3026-2|Thyroxine (T4) [Mass/volume] in Serum or Plasma|ug/dL|4|14
3053-6|Triiodothyronine (T3) [Mass/volume] in Serum or Plasma|ng/dL|60|200
11580-8|Thyrotropin [Units/volume] in Serum or Plasma by Detection limit <= 0.005 mIU/L|m[IU]/L|0.2|12
8098-6|Thyroid peroxidase Ab [Units/volume] in Serum|[IU]/mL|0|600
5048-4|Nuclear Ab [Titer] in Serum by Immunofluorescence|{titer}|0|1280
11572-5|Rheumatoid factor [Units/volume] in Serum or Plasma|[IU]/mL|0|100
33935-8|Cyclic citrullinated peptide Ab [Units/volume] in Serum|[U]/mL|0|300
4485-9|Complement C3 [Mass/volume] in Serum or Plasma|mg/dL|60|200
4498-2|Complement C4 [Mass/volume] in Serum or Plasma|mg/dL|8|50
2465-3|IgG [Mass/volume] in Serum or Plasma|mg/dL|600|1800
2458-8|IgA [Mass/volume] in Serum or Plasma|mg/dL|60|400
2472-9|IgM [Mass/volume] in Serum or Plasma|mg/dL|40|250
19113-0|IgE [Units/volume] in Serum or Plasma|[IU]/mL|0|1000
3255-7|Fibrinogen [Mass/volume] in Platelet poor plasma by Coagulation assay|mg/dL|150|600
48065-7|Fibrin D-dimer FEU [Mass/volume] in Platelet poor plasma|ng/mL{FEU}|50|5000
30341-2|Erythrocyte sedimentation rate|mm/h|2|90
33959-8|Procalcitonin [Mass/volume] in Serum or Plasma|ng/mL|0|20
26881-3|Interleukin 6 [Mass/volume] in Serum or Plasma|pg/mL|0|200
2276-4|Ferritin [Mass/volume] in Serum or Plasma|ng/mL|10|900
2500-7|Iron binding capacity [Mass/volume] in Serum or Plasma|ug/dL|200|450
2502-3|Iron saturation [Mass Fraction] in Serum or Plasma|%|10|50
3034-6|Transferrin [Mass/volume] in Serum or Plasma|mg/dL|180|380
17849-1|Reticulocytes/100 erythrocytes in Blood by Automated count|%|0.5|4
30350-3|Hemoglobin [Mass/volume] in Venous blood|g/dL|7|17
30313-1|Hemoglobin [Mass/volume] in Arterial blood|g/dL|7|17
59260-0|Hemoglobin [Moles/volume] in Blood|mmol/L|4.5|11
4635-9|Hemoglobin.free [Mass/volume] in Serum or Plasma|mg/dL|0|30
4576-5|Hemoglobin F/Hemoglobin.total in Blood|%|0|5
4551-8|Hemoglobin A2/Hemoglobin.total in Blood|%|1.5|6
5909-7|Blood smear finding [Identifier] in Blood by Light microscopy|%|0|100
6463-4|Bacteria identified in Specimen by Culture|{CFU}/mL|0|100000
630-4|Bacteria identified in Urine by Culture|{CFU}/mL|0|100000
600-7|Bacteria identified in Blood by Culture|{CFU}/mL|0|1000
5195-3|Hepatitis B virus surface Ag [Presence] in Serum|{index}|0|5
16935-9|Hepatitis B virus surface Ab [Units/volume] in Serum|m[IU]/mL|0|1000
13955-0|Hepatitis C virus Ab [Presence] in Serum or Plasma|{s/co_ratio}|0|20
29893-5|HIV 1 Ab [Presence] in Serum or Plasma by Immunoassay|{s/co_ratio}|0|5
20447-9|HIV 1 RNA [#/volume] (viral load) in Serum or Plasma by NAA with probe detection|{copies}/mL|0|1000000
24467-3|CD3+CD4+ (T4 helper) cells [#/volume] in Blood|/uL|50|1500
8122-4|CD3 cells [#/volume] in Blood|/uL|600|2500
22322-2|Hepatitis B virus surface Ab [Units/volume] in Serum by Immunoassay|m[IU]/mL|0|1000
5334-8|Rubella virus IgG Ab [Units/volume] in Serum|[IU]/mL|0|200
7905-3|Hepatitis B virus surface Ag [Presence] in Serum by Immunoassay|{index}|0|5
94500-6|SARS-CoV-2 (COVID-19) RNA [Presence] in Respiratory specimen by NAA with probe detection|{Ct}|15|40
94563-4|SARS-CoV-2 (COVID-19) IgG Ab [Presence] in Serum or Plasma by Immunoassay|{index}|0|10
32016-8|Glucose [Mass/volume] in Capillary blood|mg/dL|60|400
2349-9|Glucose [Mass/volume] in Urine|mg/dL|0|1000
2350-7|Glucose [Mass/volume] in Urine by Test strip|mg/dL|0|1000
25428-4|Glucose [Presence] in Urine by Test strip|mg/dL|0|1000
2514-8|Ketones [Presence] in Urine by Test strip|mg/dL|0|80
53553-4|Beta hydroxybutyrate [Moles/volume] in Serum or Plasma|mmol/L|0|6
2692-2|Osmolality of Serum or Plasma|mosm/kg|260|330
2695-5|Osmolality of Urine|mosm/kg|50|1200
2862-1|Albumin [Mass/volume] in Urine by Electrophoresis|mg/dL|0|300
1747-5|Albumin [Mass/volume] in Body fluid|g/dL|0.5|4
2881-1|Protein [Mass/volume] in Body fluid|g/dL|0.5|6
2342-4|Glucose [Mass/volume] in Cerebral spinal fluid|mg/dL|30|100
2880-3|Protein [Mass/volume] in Cerebral spinal fluid|mg/dL|15|200
26474-7|Lymphocytes [#/volume] in Blood|10*3/uL|0.8|4.5
26499-4|Neutrophils [#/volume] in Blood|10*3/uL|1.5|12
26484-6|Monocytes [#/volume] in Blood|10*3/uL|0.1|1.2
26449-9|Eosinophils [#/volume] in Blood|10*3/uL|0|0.8
26444-0|Basophils [#/volume] in Blood|10*3/uL|0|0.2
30384-2|Erythrocyte distribution width [Entitic volume]|fL|35|60
30385-9|Erythrocyte distribution width [Ratio]|%|11|20
30428-7|Erythrocyte mean corpuscular volume [Entitic volume]|fL|65|105
28539-5|Erythrocyte mean corpuscular hemoglobin [Entitic mass]|pg|20|35
28540-3|Erythrocyte mean corpuscular hemoglobin concentration [Mass/volume]|g/dL|30|36
49497-1|Neutrophils.band form/100 leukocytes in Blood by Manual count|%|0|15
26507-4|Neutrophils.band form [#/volume] in Blood|10*3/uL|0|2
11273-0|Hemoglobin [Mass/volume] in Blood by calculation|g/dL|7|17
"""


@dataclass(frozen=True, slots=True)
class LoincCode:
    code: str
    display: str
    unit: str
    low: float
    high: float
    vital: bool


def _loinc_codes() -> list[LoincCode]:
    out, seen = [], set()
    for n, line in enumerate(x for x in _LOINC_TABLE.strip().splitlines() if x.strip()):
        code, display, unit, low, high = line.split("|")
        if code in seen:
            continue
        seen.add(code)
        out.append(LoincCode(code, display, unit, float(low), float(high), n < 13))
    return out


CODES = _loinc_codes()
_WEIGHTS = list(itertools.accumulate(1.0 / (k + 1) ** 1.1 for k in range(len(CODES))))  # Zipf-like


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass(slots=True)
class EncounterInfo:
    id: str
    status: str
    start: datetime


@dataclass(slots=True)
class ObservationInfo:
    id: str
    code: str
    effective: datetime
    encounter: str


@dataclass(slots=True)
class PatientInfo:
    """What one patient's generated records hold (enough to draw search parameters)."""

    index: int
    id: str
    mrn: str
    family: str
    given: str
    phone: str
    gender: str
    birth_date: str
    encounters: list[EncounterInfo] = field(default_factory=list)
    observations: list[ObservationInfo] = field(default_factory=list)


_EPOCH = datetime(2019, 1, 1, tzinfo=UTC)
_SPAN_S = int((datetime(2025, 10, 1, tzinfo=UTC) - _EPOCH).total_seconds())
_ENC_STATUS = [("finished", 84), ("in-progress", 5), ("cancelled", 4), ("planned", 3), ("arrived", 2), ("triaged", 2)]
_ENC_CLASS = [("AMB", "ambulatory", 70), ("IMP", "inpatient encounter", 15), ("EMER", "emergency", 15)]


def _weighted(rng: random.Random, items: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    return rng.choices(items, weights=[x[-1] for x in items])[0]


_IST = timezone(timedelta(hours=5, minutes=30))


def _iso(t: datetime) -> str:
    """A dateTime as an Indian hospital system writes it (IST offset)."""
    return t.astimezone(_IST).isoformat(timespec="seconds")


class Generator:
    def __init__(self, patients: int, observations_per_patient: int = 10, seed: int = 42,
                 practitioners: int | None = None) -> None:
        self.patients = patients
        self.obs_per_patient = observations_per_patient
        self.seed = seed
        self.n_practitioners = practitioners if practitioners is not None else max(10, min(2000, patients // 200))
        self.practitioner_ids = [_uuid(random.Random(f"{seed}:practitioner:{k}")) for k in range(self.n_practitioners)]

    # ---- counts ---------------------------------------------------------------------------------
    def total_resources(self) -> int:
        """Exact count (the encounter count per patient is drawn, so this walks the RNGs: ~1 s per 100k)."""
        return self.n_practitioners + sum(1 + self._n_encounters(random.Random(f"{self.seed}:patient:{i}"))
                                          + self.obs_per_patient for i in range(self.patients))

    @staticmethod
    def _n_encounters(rng: random.Random) -> int:
        return rng.choice((1, 2, 2, 3))

    # ---- resources ------------------------------------------------------------------------------
    def practitioner(self, k: int) -> dict[str, Any]:
        rng = random.Random(f"{self.seed}:practitioner:{k}")
        pid = _uuid(rng)
        female = rng.random() < 0.45
        given = rng.choice(GIVEN_F if female else GIVEN_M)
        family = rng.choice(FAMILY)
        return {
            "resourceType": "Practitioner", "id": pid,
            "identifier": [{"system": "https://nmc.org.in/imr", "value": f"IMR-{rng.randrange(10**6):06d}"}],
            "active": True,
            "name": [{"use": "official", "prefix": ["Dr."], "family": family, "given": [given]}],
            "telecom": [{"system": "phone", "value": f"+91 9{rng.randrange(10**9):09d}", "use": "work"}],
            "gender": "female" if female else "male",
            "qualification": [{"code": {"text": rng.choice(SPECIALTIES)}}],
        }

    def practitioners(self) -> Iterator[dict[str, Any]]:
        for k in range(self.n_practitioners):
            yield self.practitioner(k)

    def patient_records(self, i: int) -> tuple[PatientInfo, list[dict[str, Any]]]:
        """Patient ``i``: its summary and its resources (Patient, Encounters, Observations)."""
        return self._patient(i, build=True)

    def patient_info(self, i: int) -> PatientInfo:
        return self._patient(i, build=True)[0]  # one code path, so the draws always match the load

    def _patient(self, i: int, build: bool) -> tuple[PatientInfo, list[dict[str, Any]]]:
        rng = random.Random(f"{self.seed}:patient:{i}")
        n_enc = self._n_encounters(rng)  # first draw: total_resources() relies on it
        pid = _uuid(rng)
        female = rng.random() < 0.49
        given = rng.choice(GIVEN_F if female else GIVEN_M)
        middle = rng.choice(GIVEN_M) if rng.random() < 0.3 else None
        family = rng.choice(FAMILY)
        mrn = f"{rng.choice('ABCDEFGH')}{i:08d}"
        phone = f"+91 {rng.choice('6789')}{rng.randrange(10**9):09d}"
        birth = datetime(1935, 1, 1) + timedelta(days=rng.randrange(90 * 365))
        birth_date = birth.strftime("%Y-%m-%d")
        city, district, state, pin = rng.choice(CITIES)
        info = PatientInfo(i, pid, mrn, family, given, phone, "female" if female else "male", birth_date)
        out: list[dict[str, Any]] = []
        if build:
            names: list[dict[str, Any]] = [{"use": "official", "family": family,
                                            "given": [given] + ([middle] if middle else [])}]
            telecom = [{"system": "phone", "value": phone, "use": "mobile"}]
            if rng.random() < 0.4:
                telecom.append({"system": "email", "value": f"{given.lower()}.{family.lower().replace(chr(39), '')}{i}@example.in",
                                "use": "home"})
            out.append({
                "resourceType": "Patient", "id": pid,
                "identifier": [
                    {"use": "usual", "type": {"coding": [{"system": V2_0203, "code": "MR", "display": "Medical record number"}]},
                     "system": MRN_SYSTEM, "value": mrn},
                    {"use": "official", "system": ABHA_SYSTEM,
                     "value": f"91-{rng.randrange(10**4):04d}-{rng.randrange(10**4):04d}-{rng.randrange(10**4):04d}"},
                ],
                "active": True,
                "name": names,
                "telecom": telecom,
                "gender": info.gender,
                "birthDate": birth_date,
                "address": [{"use": "home", "line": [f"{rng.randint(1, 999)}, {rng.choice(STREETS)}"], "city": city,
                             "district": district, "state": state, "postalCode": f"{pin}{rng.randrange(1000):03d}",
                             "country": "IN"}],
            })
        # encounters, in time order
        starts = sorted(_EPOCH + timedelta(seconds=rng.randrange(_SPAN_S)) for _ in range(n_enc))
        for start in starts:
            eid = _uuid(rng)
            status = _weighted(rng, _ENC_STATUS)[0]
            cls, cls_display, _ = _weighted(rng, _ENC_CLASS)
            hours = rng.uniform(0.25, 1.5) if cls != "IMP" else rng.uniform(24, 24 * 8)
            end = start + timedelta(hours=hours)
            practitioner = self.practitioner_ids[rng.randrange(self.n_practitioners)]
            info.encounters.append(EncounterInfo(eid, status, start))
            if build:
                enc: dict[str, Any] = {
                    "resourceType": "Encounter", "id": eid, "status": status,
                    "class": {"system": ACT_CODE, "code": cls, "display": cls_display},
                    "type": [{"text": rng.choice(SPECIALTIES) + " consultation"}],
                    "subject": {"reference": f"Patient/{pid}"},
                    "participant": [{"individual": {"reference": f"Practitioner/{practitioner}"}}],
                    "period": {"start": _iso(start)} if status in ("in-progress", "arrived", "triaged", "planned")
                    else {"start": _iso(start), "end": _iso(end)},
                }
                out.append(enc)
        # observations, spread over the encounters
        for _ in range(self.obs_per_patient):
            k = rng.randrange(n_enc)
            enc_info = info.encounters[k]
            c = CODES[bisect.bisect_left(_WEIGHTS, rng.random() * _WEIGHTS[-1])]
            oid = _uuid(rng)
            effective = enc_info.start + timedelta(minutes=rng.randrange(90))
            value = round(rng.uniform(c.low, c.high), 1 if c.high - c.low > 5 else 2)
            performer = self.practitioner_ids[rng.randrange(self.n_practitioners)]
            info.observations.append(ObservationInfo(oid, c.code, effective, enc_info.id))
            if build:
                out.append({
                    "resourceType": "Observation", "id": oid, "status": "final",
                    "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs" if c.vital else "laboratory",
                                              "display": "Vital Signs" if c.vital else "Laboratory"}]}],
                    "code": {"coding": [{"system": LOINC, "code": c.code, "display": c.display}], "text": c.display},
                    "subject": {"reference": f"Patient/{pid}"},
                    "encounter": {"reference": f"Encounter/{enc_info.id}"},
                    "effectiveDateTime": _iso(effective),
                    "issued": _iso(effective + timedelta(minutes=30)),
                    "performer": [{"reference": f"Practitioner/{performer}"}],
                    "valueQuantity": {"value": value, "unit": c.unit, "system": UCUM, "code": c.unit},
                })
        return info, out

    def resources(self, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
        """Practitioners (with start == 0), then patients ``start..stop`` each followed by its records."""
        if start == 0:
            yield from self.practitioners()
        for i in range(start, self.patients if stop is None else stop):
            yield from self._patient(i, build=True)[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write the synthetic resources as NDJSON to stdout")
    p.add_argument("--patients", type=int, default=10)
    p.add_argument("--observations-per-patient", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args(argv)
    out = sys.stdout.buffer
    for r in Generator(a.patients, a.observations_per_patient, a.seed).resources():
        out.write(orjson.dumps(r) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
